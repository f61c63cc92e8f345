"""What transformers does to text around a tokenizer: chat templates rendered in its jinja2 environment
(sandboxed, trim_blocks/lstrip_blocks, loop controls, ``raise_exception``, ``strftime_now``, ``tojson``) and its
``clean_up_tokenization`` of decoded text. Used by :class:`ntkdyn.models.tokenizer.HFTokenizer`."""
from __future__ import annotations

import datetime
import functools
import json

__all__ = ["compile_template", "clean_up_spaces"]


def clean_up_spaces(text: str) -> str:
    """transformers' ``clean_up_tokenization``: drop the space before punctuation and English contractions."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


@functools.lru_cache(maxsize=16)
def compile_template(template: str):
    """A chat template compiled in the environment transformers renders it in."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)
