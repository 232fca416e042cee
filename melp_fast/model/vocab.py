"""Vocabulary growth for domain adaptation: frequent corpus words that the tokenizer shatters into many word
pieces become whole tokens, their embeddings initialised from the mean of their pieces.

    words = select_new_words(reports, tokenizer, min_count=20, min_pieces=3, max_new=200)
    added = grow_vocabulary(model, tokenizer, words)     # [(word, new id, [piece ids])]

Words are runs of letters, lower-cased. A new token is added as a whole-word token (AddedToken single_word=True,
normalized=True): it matches "Fibrillation" but not the inside of "fibrillations", which keeps its pieces.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

WORD = re.compile(r"[a-z]+")


def count_words(texts) -> Counter:
    counts: Counter = Counter()
    for t in texts:
        counts.update(WORD.findall(t.lower()))
    return counts


def select_new_words(texts, tokenizer, min_count: int = 20, min_pieces: int = 3, max_new: int = 200) -> list[str]:
    """Words of frequency >= min_count split into >= min_pieces word pieces, most frequent first (ties by name)."""
    if max_new <= 0:
        return []
    vocab = tokenizer.get_vocab()
    picked = []
    for word, n in sorted(count_words(texts).items(), key=lambda kv: (-kv[1], kv[0])):
        if n < min_count:
            break
        if word in vocab:
            continue
        if len(tokenizer.tokenize(word)) >= min_pieces:
            picked.append(word)
            if len(picked) >= max_new:
                break
    return picked


def grow_vocabulary(model, tokenizer, words: list[str]) -> list[tuple[str, int, list[int]]]:
    """Add `words` to the tokenizer and resize the model's embeddings; each new input embedding row (and, for a
    masked-LM model, its output bias) is the mean of the word's pieces. Returns (word, id, piece ids) per word."""
    from transformers import AddedToken

    if not words:
        return []
    pieces = {w: tokenizer(w, add_special_tokens=False)["input_ids"] for w in words}
    n_added = tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=True) for w in words])
    if n_added != len(words):
        raise ValueError(f"the tokenizer took {n_added} of {len(words)} new words (duplicates or known tokens?)")
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    bias = getattr(out, "bias", None) if out is not None else None
    out_w = out.weight if out is not None else None
    added = []
    with torch.no_grad():
        for w in words:
            i = tokenizer.convert_tokens_to_ids(w)
            p = torch.tensor(pieces[w], dtype=torch.long, device=emb.device)
            emb[i] = emb[p].mean(0)
            if out_w is not None and out_w.data_ptr() != emb.data_ptr():  # an untied output layer
                out_w[i] = out_w[p].mean(0)
            if bias is not None:
                bias[i] = bias[p].mean()
            added.append((w, int(i), [int(x) for x in pieces[w]]))
    return added
