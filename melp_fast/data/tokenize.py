"""Reports -> token rows with the sentence of every token: the one place the row layout is written.

Layout of one row: [CLS] s1 tokens .. sn tokens [SEP] [CLS_end] [PAD]...
- sent_ids: index of the sentence each token belongs to, -1 for special tokens and padding;
- eos_pos: the position of the appended [CLS] (with the causal mask it sees the whole report);
- caption_labels: next-token targets for the captioning decoder (position t predicts token t + 1, up to [SEP]),
  -100 elsewhere.
``ReportTokenizer`` builds rows with ``row`` and pads them with ``pad_rows``; ``data.dataset.Collate`` builds the
same rows from its per-sentence token cache through the same two functions. No nn code here: data/ never imports
model/.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from .reports import split_sentences

ROW_KEYS = ("input_ids", "attention_mask", "sent_ids", "caption_labels")
PAD_VALUES = {"attention_mask": 0, "sent_ids": -1, "caption_labels": -100}  # input_ids: the tokenizer's pad id


def pad_rows(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows (1-D tensors of their own lengths, and eos_pos) -> a padded batch."""
    pad = {"input_ids": pad_id, **PAD_VALUES}
    out = {k: pad_sequence([row[k] for row in rows], batch_first=True, padding_value=v) for k, v in pad.items()}
    out["eos_pos"] = torch.tensor([int(row["eos_pos"]) for row in rows], dtype=torch.long)
    return out


class ReportTokenizer:
    """Reports -> token ids with the sentence of every token, an end-of-text [CLS] and caption targets (layout in
    the module docstring). Wraps a Hugging Face tokenizer (``tok``)."""

    def __init__(self, tokenizer, max_len: int = 128, max_sentences: int = 16):
        if max_len < 4:
            raise ValueError("max_len must be at least 4")
        self.tok, self.max_len, self.max_sentences = tokenizer, max_len, max_sentences
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def sentences(self, report: str) -> list[str]:
        """The sentences of a report that get tokens (at most max_sentences)."""
        return split_sentences(report)[: self.max_sentences]

    def pieces(self, sentences: list[str]) -> list[list[int]]:
        """Word-piece ids of each sentence, without special tokens."""
        return self.tok(sentences, add_special_tokens=False)["input_ids"] if sentences else []

    def row(self, pieces: list[list[int]]) -> dict:
        """One report's row from the word pieces of its sentences (truncated to max_len)."""
        ids, sid = [self.cls], [-1]
        budget = self.max_len - 3
        for k, p in enumerate(pieces):
            p = p[: budget - (len(ids) - 1)]
            ids += p
            sid += [k] * len(p)
        ids += [self.sep, self.cls]
        sid += [-1, -1]
        n = len(ids)
        t = torch.tensor(ids, dtype=torch.long)
        labels = torch.full((n,), -100, dtype=torch.long)
        labels[: n - 2] = t[1: n - 1]  # predict up to and including [SEP]
        return {"input_ids": t, "attention_mask": torch.ones(n, dtype=torch.long),
                "sent_ids": torch.tensor(sid, dtype=torch.long), "caption_labels": labels, "eos_pos": n - 1}

    def __call__(self, reports: list[str]) -> dict[str, torch.Tensor]:
        sentences = [self.sentences(r) for r in reports]
        pieces = self.pieces([s for sents in sentences for s in sents])
        rows, i = [], 0
        for sents in sentences:
            rows.append(self.row(pieces[i:i + len(sents)]))
            i += len(sents)
        return pad_rows(rows, self.pad)
