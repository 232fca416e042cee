"""Report generation for one ECG file (WFDB .hea, DICOM .dcm, MUSE / Philips .xml) with the captioning decoder, and
the picture of the beat attention of each report sentence.

    melp-fast generate --model runs/tiny/model --ecg record.dcm|.hea|.xml|example [--beam-width 4] [--report "..."]
                       [--raw] [--out DIR]

Generation is autoregressive as in training (MELP.forward): the text encoder (causal) runs on the token prefix,
the decoder runs on its states with cross-attention to the pooled ECG tokens, and the last position's logits give
the next token. It starts from [CLS] and stops at [SEP] or the maximum length. Greedy search takes the most
likely token; beam search keeps ``beam_width`` prefixes ranked by their summed log-probability divided by
length ** length_penalty.

Each report is grounded in the detected beats (``grounding.py``): a stated ventricular rate is set to the rate
measured from the R peaks (the change is printed; ``--raw`` prints the model's text too), and rhythm statements
that the RR intervals contradict are flagged in the output.

The ECG goes through the store's pipeline: ``read_record`` (canonical leads, 500 Hz, 5000 samples), R-peak
detection and beat spans on the raw signal, then high-pass + min-max (``data.signal.preprocess``); beat spans in
encoder-token units as the dataset makes them (``data.beats.token_spans``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import beats as beatlib
from ..data.constants import FS
from ..data.reports import split_sentences
from ..data.signal import preprocess

EXAMPLE = "example"  # --ecg example: the real 12-lead ECG that pydicom ships (waveform_ecg.dcm)


def example_ecg() -> Path:
    """The path of pydicom's test ECG (a real 12-lead DICOM waveform; pydicom is a dependency)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("waveform_ecg.dcm"))


def load_ecg(path, model) -> dict:
    """An ECG file as a model batch of one (see ``ecg_batch``), with the file's meta for plotting."""
    from ..data.sources.single import read_record

    raw, meta = read_record(path, raw=True, max_beats=model.cfg.max_beats)
    return {**ecg_batch(raw, model), "meta": meta}


def ecg_batch(raw: np.ndarray, model) -> dict:
    """A raw 12-lead signal (mV, 500 Hz, [12, 5000], canonical lead order) as a model batch of one, the way the
    store makes it: ecg [1, 12, 5000] (high-pass + min-max), beat_spans [1, K, 2] (token units), beat_mask [1, K],
    beat_seconds [1, K] (each span's duration in seconds, from the spans in samples);
    with the raw signal, the beat spans in samples and the R peaks for plotting. Limb leads that are all zero are
    derived from the others first (``data.leads.complete_leads``; ``missing_leads``, ``derived_leads``)."""
    from ..data.leads import complete_leads

    cfg = model.cfg
    raw = np.array(raw, dtype=np.float32)  # a copy: the caller's signal is not changed
    missing, derived = complete_leads(raw)  # zero-filled limb leads derived from I and II (as every reader does)
    highpass_hz = getattr(getattr(model, "config", None), "data", None)
    highpass_hz = highpass_hz.highpass_hz if highpass_hz is not None else 4.0
    r_peaks = beatlib.detect_r_peaks(raw, FS)
    spans = beatlib.beat_spans(r_peaks, raw.shape[-1])[: cfg.max_beats]
    x = preprocess(raw, FS, highpass_hz)
    n_tokens = model.ecg.n_tokens(x.shape[-1])
    K = max(len(spans), 1)
    tok = np.zeros((K, 2), dtype=np.int64)
    mask = np.zeros(K, dtype=bool)
    seconds = np.zeros(K, dtype=np.float32)
    if len(spans):
        tok[: len(spans)] = beatlib.token_spans(spans, model.ecg.stride, n_tokens)
        mask[: len(spans)] = True
        seconds[: len(spans)] = beatlib.span_seconds(spans, FS)
    device = model.logit_scale.device
    return {"ecg": torch.from_numpy(x)[None].float().to(device), "beat_spans": torch.from_numpy(tok)[None].to(device),
            "beat_mask": torch.from_numpy(mask)[None].to(device),
            "beat_seconds": torch.from_numpy(seconds)[None].to(device), "raw": raw, "spans": spans, "r_peaks": r_peaks,
            "missing_leads": missing, "derived_leads": derived}


def rate_bpm(r_peaks) -> float:
    """The mean heart rate of detected R peaks (samples at FS), in beats per minute; NaN with fewer than two."""
    rp = np.asarray(r_peaks)
    return 60.0 * FS / float(np.diff(rp).mean()) if len(rp) > 1 else float("nan")


@torch.no_grad()
def _next_logprobs(model, prefix: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """log-softmax of the next-token logits [b, V] for token prefixes [b, L] (all positions valid)."""
    attn = torch.ones_like(prefix)
    states = model.text.backbone(input_ids=prefix, attention_mask=attn).last_hidden_state
    hidden = model.decoder(states, context.expand(prefix.shape[0], -1, -1), attn, project=False)
    return torch.log_softmax(model.decoder.head(hidden[:, -1]).float(), dim=-1)


def _banned(model) -> list[int]:
    tok = model.text.tokenizer
    ids = {tok.pad_token_id, tok.cls_token_id, getattr(tok, "mask_token_id", None), getattr(tok, "unk_token_id", None)}
    return [i for i in ids if i is not None]


@torch.no_grad()
def generate_ids(model, batch: dict, method: str = "greedy", beam_width: int = 4, max_len: int | None = None,
                 length_penalty: float = 1.0) -> list[int]:
    """Token ids of a generated report (without [CLS] / [SEP]) for a batch of one ECG."""
    model.eval()
    tok = model.text.tokenizer
    cls, sep = tok.cls_token_id, tok.sep_token_id
    max_len = max_len or model.cfg.max_text_len - 2
    e = model.encode_ecg(batch["ecg"], batch["beat_spans"], batch["beat_mask"], batch.get("beat_seconds"))
    context = model.caption_pool(e["tokens"])[:1]
    banned = _banned(model)
    device = context.device
    if method == "greedy":
        seq = torch.tensor([[cls]], device=device)
        for _ in range(max_len):
            lp = _next_logprobs(model, seq, context)[0]
            lp[banned] = -float("inf")
            nxt = int(lp.argmax())
            if nxt == sep:
                break
            seq = torch.cat([seq, torch.tensor([[nxt]], device=device)], 1)
        return seq[0, 1:].tolist()
    if method != "beam":
        raise ValueError(f"method must be 'greedy' or 'beam', not {method!r}")
    beams = [([cls], 0.0)]
    done: list[tuple[list[int], float]] = []
    norm = lambda ids, s: s / max(len(ids) - 1, 1) ** length_penalty  # noqa: E731  ([SEP] counted)
    for _ in range(max_len):
        seqs = torch.tensor([b[0] for b in beams], device=device)
        lp = _next_logprobs(model, seqs, context)
        lp[:, banned] = -float("inf")
        cand = []
        top = lp.topk(beam_width, dim=-1)
        for bi, (ids, score) in enumerate(beams):
            for v, t in zip(top.values[bi].tolist(), top.indices[bi].tolist()):
                cand.append((ids + [t], score + v))
        cand.sort(key=lambda c: c[1], reverse=True)
        beams = []
        for ids, score in cand:
            if ids[-1] == sep:
                done.append((ids, norm(ids, score)))
            else:
                beams.append((ids, score))
            if len(beams) == beam_width:
                break
        best_done = max((d[1] for d in done), default=-float("inf"))
        # stop when no live beam can beat the best finished one (scores only fall as a beam grows, for
        # length_penalty <= 1 this bound is exact enough for a report generator)
        if not beams or (len(done) >= beam_width and max(norm(b[0] + [sep], b[1]) for b in beams) < best_done):
            break
    if not done:
        done = [(b[0] + [sep], norm(b[0] + [sep], b[1])) for b in beams]
    ids = max(done, key=lambda d: d[1])[0]
    return [i for i in ids[1:] if i != sep]


def decode(model, ids: list[int]) -> str:
    text = model.text.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return " ".join(text.replace(" .", ".").replace(" ,", ",").split())


def generate_report(model, batch: dict, method: str = "greedy", beam_width: int = 4, max_len: int | None = None,
                    length_penalty: float = 1.0) -> str:
    return decode(model, generate_ids(model, batch, method, beam_width, max_len, length_penalty))


@torch.no_grad()
def sentence_attention(model, batch: dict, report: str, t1: float | None = None,
                       kind: str = "local") -> tuple[list[str], np.ndarray]:
    """(sentences, weights [K, S]): for each report sentence a distribution over the ECG's detected beats.

    kind="local": A2 of the local loss (``local_attention`` of the beat and sentence embeddings), the weights
    that build each sentence's beat context in training. Its first softmax runs across sentences on raw dot
    products, so when those are large A1 is one-hot and A2 comes out uniform over beats.
    kind="similarity": softmax over beats of t1 * cos(beat, sentence): which beats resemble each sentence most."""
    from melp_kernels.local_loss import local_attention

    if t1 is None:
        t1 = getattr(getattr(model, "config", None), "loss", None)
        t1 = t1.t1 if t1 is not None else 4.0
    sentences = split_sentences(report)[: model.tokenizer.max_sentences]
    e = model.encode_ecg(batch["ecg"], batch["beat_spans"], batch["beat_mask"], batch.get("beat_seconds"))
    device = model.logit_scale.device
    tb = {k: v.to(device) for k, v in model.tokenizer([report]).items()}
    t = model.encode_text(**tb)
    n_s = len(sentences)
    sents, smask = t["sents"][0, :n_s].float(), t["sent_mask"][0, :n_s]
    beats, bmask = e["beats"][0].float(), e["beat_mask"][0]
    if kind == "local":
        return sentences, local_attention(beats, bmask, sents, smask, t1).cpu().numpy()
    if kind != "similarity":
        raise ValueError(f"kind must be 'local' or 'similarity', not {kind!r}")
    cos = torch.nn.functional.normalize(beats, dim=-1) @ torch.nn.functional.normalize(sents, dim=-1).T
    w = torch.softmax((t1 * cos).masked_fill(~bmask[:, None], -float("inf")), dim=0)
    w = torch.where(bmask[:, None] & smask[None, :], w, torch.zeros_like(w))
    return sentences, w.cpu().numpy()


def is_flat(weights: np.ndarray, tol: float = 0.05) -> bool:
    """True when every sentence's beat weights are uniform within ``tol`` of 1/K (K = beats with weight): the
    attention then carries no information (e.g. A2 of the local loss when A1 is one-hot)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0:
        return True
    k = max(int((w.sum(1) > 0).sum()), 1)
    valid = w[w.sum(1) > 0]
    return bool(np.abs(valid - 1.0 / k).max() <= tol / k)


def attention_for_picture(model, batch: dict, report: str, kind: str = "local"):
    """(sentences, weights, kind drawn, note): the attention of ``kind``; when it is flat, the similarity view
    instead, with a note saying so (the picture then still shows which beats resemble each sentence)."""
    sentences, w = sentence_attention(model, batch, report, kind=kind)
    if kind == "local" and is_flat(w):
        k = max(int((w.sum(1) > 0).sum()), 1)
        sentences, w = sentence_attention(model, batch, report, kind="similarity")
        note = (f"the local loss's beat attention A2 is flat (1/{k} = {1 / k:.3f} on every beat, no information): "
                "drawn instead: the similarity view softmax over beats of t1 * cos(beat, sentence)")
        return sentences, w, "similarity", note
    return sentences, w, kind, ""


def main(argv=None) -> int:
    import json

    from .export import load_model
    from ..options import parse
    from ..plots import plot_attention

    args = parse("generate", argv)  # melp_fast/options.py holds every command's options
    from ..checks import check_generate_args, check_generate_len

    check_generate_args(args)  # ranges, device, a writable --out: before the model is loaded
    if args.ecg == EXAMPLE:
        args.ecg = example_ecg()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, args.device)
    check_generate_len(args.max_len, model)
    try:
        batch = load_ecg(args.ecg, model)
    except ValueError as e:  # a record that cannot be used (fs 0 / inf, ...) is one line, exit 2
        from ..errors import UserError

        raise UserError(f"melp-fast generate: {e}") from None
    from .grounding import ground_report

    meta = batch["meta"]
    derived = meta.get("derived_leads") or batch["derived_leads"]
    out = {"ecg": str(args.ecg), "n_beats": int(len(batch["spans"])), "missing_leads": meta.get("missing_leads", []),
           "derived_leads": derived}
    print(f"ECG: {args.ecg}  ({len(batch['spans'])} beats detected; leads missing: "
          f"{meta.get('missing_leads') or 'none'}" + (f"; derived: {', '.join(derived)}" if derived else "") + ")")
    if meta.get("report"):
        print(f"report in the file:          {meta['report']}")
        out["file_report"] = meta["report"]
    runs = [("greedy", "generated (greedy):         ", {})]
    if args.beam_width > 1:
        runs.append(("beam", f"generated (beam, width {args.beam_width}): ",
                     {"beam_width": args.beam_width, "length_penalty": args.length_penalty}))
        out["beam_width"] = args.beam_width
    for method, label, kw in runs:
        g = ground_report(generate_report(model, batch, method, max_len=args.max_len, **kw), batch["r_peaks"], FS)
        out[method], out[f"{method}_grounded"] = g.text, g.as_dict()
        print(f"{label} {g.text}")
        if args.raw:
            print(f"  raw model text:            {g.raw}")
        for c in g.changes:
            print(f"  grounded: {c}")
        for f in g.flags:
            print(f"  FLAG (contradicted by the RR intervals): {f}")
        chosen = g.text
    report = args.report if args.report is not None else chosen
    sentences, A2, kind, note = attention_for_picture(model, batch, report, args.attention)
    if note:
        print(f"note: {note}")
    out["attention"] = {"kind": kind, "requested": args.attention, "note": note, "report": report,
                        "sentences": sentences, "beat_spans_samples": batch["spans"].tolist(),
                        "weights": A2.round(4).tolist()}
    d = Path(args.out) if args.out else Path("runs/generate") / Path(args.ecg).stem
    d.mkdir(parents=True, exist_ok=True)
    png = plot_attention(batch["raw"], FS, batch["spans"], batch["r_peaks"], sentences, A2, d / "attention.png",
                         title=f"{Path(args.ecg).name}: {report}", kind=kind, note=note)
    (d / "report.json").write_text(json.dumps(out, indent=2))
    for s, w in zip(sentences, A2.T):
        top = np.argsort(-w)[:3]
        print(f"  attention of \"{s}\": top beats " + ", ".join(f"#{q + 1} ({w[q]:.3f})" for q in top if w[q] > 0))
    print(f"written: {png}, {d / 'report.json'}")
    return 0
