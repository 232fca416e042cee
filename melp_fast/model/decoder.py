"""Token level: the captioning decoder (CoCa's multimodal text decoder)."""

from __future__ import annotations

from torch import nn

from .attention import DecoderLayer


class CaptionDecoder(nn.Module):
    """Causal self-attention over the text encoder's token states + cross-attention to the pooled ECG tokens.

    The output projection `head` gives logits (generation: the last position only); in training the caption loss
    takes its weight and the hidden states instead (melp_kernels.caption_head, model/melp.py ModelOutput). It is
    initialised (normal, std 0.02): the reference creates it with torch.empty and never initialises it.
    """

    def __init__(self, dim: int, heads: int, layers: int, vocab_size: int, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, 4 * dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, text_states, ecg_context, attention_mask=None, project: bool = True, with_head: bool = False):
        """Vocabulary logits [B, L, V]; with project=False the normalised hidden states [B, L, D]; with
        with_head=True (training) those states and the head's weight and bias, for the loss to project them.

        The head's parameters leave through this module's output on purpose: under ZeRO-3 DeepSpeed keeps a
        parameter that a submodule returns gathered (it registers it with the enclosing module), so the loss, which
        runs outside the model, finds the whole (possibly tied) weight rather than this rank's empty partition."""
        x = text_states
        keep = attention_mask.bool() if attention_mask is not None else None
        for layer in self.layers:
            x = layer(x, ecg_context, key_padding_mask=keep)
        x = self.norm(x)
        if with_head:
            return x, self.head.weight, self.head.bias
        return self.head(x) if project else x
