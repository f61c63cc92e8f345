"""The analyses behind the paper's figures, one module each (one_step, features, kernel, pass_at_k): each runs on
an LM and writes its numbers and figures into a directory."""
