"""Reward models (ntkdyn.models.classifier) against transformers' sequence classifiers, built offline."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_models import SPECS, randomize  # noqa: E402
from ntkdyn.models.classifier import load_reward_model  # noqa: E402
from ntkdyn.models.config import CheckpointError  # noqa: E402
from ntkdyn.models.tokenizer import CharTokenizer, HFTokenizer  # noqa: E402
from ntkdyn.tasks import RewardSet  # noqa: E402

CLS = {"GPT2Config": "GPT2ForSequenceClassification", "GPTNeoXConfig": "GPTNeoXForSequenceClassification",
       "LlamaConfig": "LlamaForSequenceClassification", "Qwen2Config": "Qwen2ForSequenceClassification"}
FAMILIES = ["gpt2", "neox_parallel", "llama_gqa", "llama_tied", "qwen2"]
PROMPTS = ["sum 47:", "what is 3+4?", "a", "kx[10,90]: pick"]
COMPLETIONS = ["12+35", " 7", "bcd efg hij", ""]
TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}. {% endfor %}"


def build(name, root, num_labels=1, pad=0, seed=0, tokenizer="char"):
    cfg_cls, kw = SPECS[name]
    cfg = getattr(transformers, cfg_cls)(bos_token_id=1, eos_token_id=2, pad_token_id=pad, num_labels=num_labels,
                                         **kw)
    torch.manual_seed(seed)
    model = randomize(getattr(transformers, CLS[cfg_cls])(cfg).eval())
    path = os.path.join(root, f"rm-{name}-{num_labels}-{pad}")
    model.save_pretrained(path)
    char = CharTokenizer()
    if tokenizer == "char":
        char.save(path)
    else:  # an HF tokenizer with a chat template
        HFTokenizer.from_parts(char.tokenizer, {"chat_template": TEMPLATE, "pad_token": "<pad>", "bos_token": "<bos>",
                                                "eos_token": "<eos>"}).save(path)
    return path, model


def torch_scores(model, seqs, pad):
    """transformers' pooled logits of right-padded sequences (one at a time when there is no pad id)."""
    if pad is None:
        return np.concatenate([model(input_ids=torch.tensor([s])).logits.detach().numpy() for s in seqs])
    T = max(map(len, seqs))
    ids = torch.tensor([s + [pad] * (T - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.numpy()


@pytest.mark.parametrize("name", FAMILIES)
def test_scores_match_transformers(tmp_path, name):
    path, model = build(name, str(tmp_path))
    rm = load_reward_model(path)
    assert rm.name == os.path.basename(path) and rm.num_labels == 1
    seqs = rm.encode(PROMPTS, COMPLETIONS)
    assert seqs[0] == CharTokenizer().encode("sum 47:12+35")  # prompt + completion, no special tokens
    got = rm.score(PROMPTS, COMPLETIONS)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, torch_scores(model, seqs, 0)[:, 0], atol=1e-4, rtol=1e-4)
    # batched in chunks (padding rows and lengths change nothing)
    np.testing.assert_allclose(rm.score(PROMPTS, COMPLETIONS, batch_size=3), got, atol=1e-5)


def test_two_labels_and_no_pad_id(tmp_path):
    path, model = build("neox_sequential", str(tmp_path), num_labels=2, pad=None)
    rm = load_reward_model(path)
    seqs = rm.encode(PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(rm.logits(PROMPTS, COMPLETIONS), torch_scores(model, seqs, None), atol=1e-4)
    # a pad id inside the text: transformers pools at the rightmost non-pad token
    path, model = build("gpt2", str(tmp_path), pad=5)
    rm = load_reward_model(path)
    seqs = [[7, 8, 5, 9], [7, 5, 5], [5, 5]]
    np.testing.assert_allclose(rm.logits_ids(seqs), torch_scores(model, seqs, 5), atol=1e-4)


def test_chat_template_and_reward_function(tmp_path):
    path, model = build("llama_gqa", str(tmp_path), tokenizer="hf")
    rm = load_reward_model(path)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    assert rm.render(chats[0], "12+35") == "user: sum 47:. assistant: 12+35. "
    fn = rm.as_reward_function()
    assert fn.__name__ == rm.name
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]  # TRL's conversational shape
    out = RewardSet([fn])(chats, COMPLETIONS, None)
    seqs = [rm.tokenizer.encode(rm.render(p, c)) for p, c in zip(chats, completions)]
    np.testing.assert_allclose(out.rewards, torch_scores(model, seqs, 0)[:, 0], atol=1e-4)
    assert set(out.metrics) == {f"rewards/{rm.name}/{k}" for k in ("mean", "std", "unusable")}
    assert out.metrics[f"rewards/{rm.name}/unusable"] == 0  # a reward model scores every completion
    np.testing.assert_allclose(fn(prompts=chats, completions=completions, completion_ids=None), out.rewards, atol=1e-6)


def test_bad_checkpoints(tmp_path):
    path, _ = build("gpt2", str(tmp_path))
    rm = load_reward_model(path)
    with pytest.raises(ValueError, match="sample 1 has 99 tokens"):
        rm.logits_ids([[3], [3] * 99])
    lm_dir = os.path.join(str(tmp_path), "lm")
    cfg_cls, kw = SPECS["gpt2"]
    transformers.GPT2LMHeadModel(getattr(transformers, cfg_cls)(**kw)).save_pretrained(lm_dir)
    with pytest.raises(CheckpointError, match="not a sequence classifier"):
        load_reward_model(lm_dir)
    with pytest.raises(CheckpointError):
        load_reward_model(os.path.join(str(tmp_path), "nope"))


def test_reward_model_directory_as_reward_spec(tmp_path):
    from ntkdyn import tasks

    path, model = build("qwen2", str(tmp_path))
    fn = tasks.reward_function(path)  # a directory with config.json: the reward model
    assert fn.__name__ == os.path.basename(path)
    out = tasks.reward_set(None, [path, "sum"], weights=[0.5, 1.0])(["sum 47:", "sum 20:"], ["12+35", "1+1"])
    rm = load_reward_model(path)
    np.testing.assert_allclose(out.per_func[:, 0], rm.score(["sum 47:", "sum 20:"], ["12+35", "1+1"]), atol=1e-6)
    np.testing.assert_allclose(out.rewards, 0.5 * out.per_func[:, 0] + np.array([1.0, 0.0]), atol=1e-6)
