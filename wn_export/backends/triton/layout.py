"""What the fused step kernel (`kernel.wavenet_steps`) is given: its packed weight blob, its layer
table and its compile-time constants, all derived from a `WaveNetConfig` here and nowhere else.

Blob (elements of the weight dtype, every section starting on a multiple of ALIGN):

    embedding (Q, R) | head 1 weight (S_out, S_in) | head 1 bias (S) | head 2 weight (S, Q) [in, out]
    | head 2 bias (Q) | layer 0 | layer 1 | … (LAYER_SIZE elements each)

    layer: conv weight (K, G, R) [tap, gate row, channel] | conv bias (G) | cond weight (G, C)
           | residual weight (H, R) [gate unit, channel] | residual bias (R) | skip weight (H, S) | skip bias (S)

G = gate channels (tanh rows 0…H−1, σ rows H…G−1), H = G/2. Absent biases are zeros; a last layer
without a residual 1×1 has zero residual weights (its output is never read). Layer table: (L, 3) int32
(dilation, ring offset, ring length), the ring layout of `wn_export.graphs.ring_offsets`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reference_model import WaveNet, WaveNetConfig
from wn_export.errors import BackendError

ALIGN = 16  # elements: 64-byte (fp32) / 32-byte (fp16) aligned sections
TILE = 4096  # elements of one weight tile (rows × padded columns): bounds registers per program
KERNEL_SIZES = (2, 3)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
INDEX_LIMIT = 2**31  # elements addressable with the kernel's 32-bit offsets


def unsupported(cfg: WaveNetConfig) -> list[str]:
    """The config options the fused kernel does not implement (empty: supported)."""
    out = []
    if cfg.scalar_input:
        out.append("input_kind 'scalar'")
    if cfg.mol:
        out.append("output_kind 'mol'")
    if cfg.initial_filter_width > 1:
        out.append(f"initial_filter_width {cfg.initial_filter_width}")
    if cfg.kernel_size not in KERNEL_SIZES:
        out.append(f"kernel_size {cfg.kernel_size} (the kernel has 2 or 3 taps)")
    return out


def check_supported(cfg: WaveNetConfig) -> None:
    problems = unsupported(cfg)
    if problems:
        raise BackendError(f"the fused Triton step kernel does not support {', '.join(problems)}")


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class KernelLayout:
    cfg: WaveNetConfig
    block_h: int  # gate rows per tile (BH)
    block_o: int  # head hidden units per tile (BO)

    @classmethod
    def of(cls, cfg: WaveNetConfig, block_h: int | None = None, block_o: int | None = None) -> KernelLayout:
        check_supported(cfg)
        H = cfg.gate_channels // 2
        widest = max(_pow2(cfg.residual_channels), _pow2(cfg.skip_channels), _pow2(max(cfg.local_channels, 1)))
        bh = block_h or min(_pow2(H), max(1, TILE // widest))
        bo = block_o or min(_pow2(cfg.skip_channels),
                            max(1, TILE // max(_pow2(cfg.skip_channels), _pow2(cfg.quantization_channels))))
        for name, v in (("block_h", bh), ("block_o", bo)):
            if v < 1 or v & (v - 1):
                raise BackendError(f"{name} must be a power of two (got {v})")
        return cls(cfg, bh, bo)

    # ---- sections ----------------------------------------------------------------------------
    @property
    def _dims(self):
        c = self.cfg
        return (c.residual_channels, c.gate_channels, c.gate_channels // 2, c.skip_channels,
                c.quantization_channels, c.local_channels, c.kernel_size)

    def _head_offsets(self) -> dict[str, int]:
        R, _, _, S, Q, _, _ = self._dims
        out, at = {}, 0
        for name, n in (("EMB", Q * R), ("H1W", S * S), ("H1B", S), ("H2W", S * Q), ("H2B", Q), ("LAYER0", 0)):
            out[name] = at
            at += _aligned(n)
        return out

    def _layer_offsets(self) -> dict[str, int]:
        R, G, H, S, _, C, K = self._dims
        out, at = {}, 0
        for name, n in (("CW", K * G * R), ("CB", G), ("CCW", G * C), ("RW", H * R), ("RB", R),
                        ("SW", H * S), ("SB", S), ("LAYER_SIZE", 0)):
            out[name] = at
            at += _aligned(n)
        return out

    @property
    def size(self) -> int:
        """Elements of the weight blob."""
        return self._head_offsets()["LAYER0"] + self.cfg.layers * self._layer_offsets()["LAYER_SIZE"]

    @property
    def state_rows(self) -> int:
        """N: rows of one stream's ring state, Σ(K−1)·d."""
        return sum(self.cfg.state_lengths)

    def constexprs(self) -> dict[str, int | bool]:
        """The kernel's compile-time arguments (DRAW and GREEDY are per launch, not here)."""
        R, _, H, S, Q, C, K = self._dims
        head, layer = self._head_offsets(), self._layer_offsets()
        return {"R": R, "H": H, "S": S, "Q": Q, "C": C, "K": K,
                "RP": _pow2(R), "SP": _pow2(S), "QP": _pow2(Q), "CP": _pow2(max(C, 1)),
                "BH": self.block_h, "BO": self.block_o,
                **{k: head[k] for k in ("H1W", "H1B", "H2W", "H2B", "LAYER0")},
                **layer,
                "HAS_COND": self.cfg.local, "HAS_SPEAKER": self.cfg.global_,
                "LEGACY_SKIP": self.cfg.legacy_skip_scale}

    def scalars(self) -> dict[str, float]:
        return {"residual_scale": math.sqrt(0.5) if self.cfg.scale_residual else 1.0,
                "skip_scale": self.cfg.skip_scale}

    def table(self) -> torch.Tensor:
        """(L, 3) int32: dilation, ring offset, ring length of every layer."""
        rows, offset = [], 0
        for d, n in zip(self.cfg.layer_dilations, self.cfg.state_lengths):
            rows.append((d, offset, n))
            offset += n
        return torch.tensor(rows, dtype=torch.int32)

    def check_batch(self, batch: int) -> None:
        """Refuse a batch whose ring state the kernel's 32-bit offsets cannot address (before allocating)."""
        per_stream = max(1, self.state_rows * self.cfg.residual_channels)
        most = (INDEX_LIMIT - 1) // per_stream
        if not 1 <= batch <= most:
            raise BackendError(f"the fused kernel runs 1 to {most:,} streams of this model (got batch {batch})")

    # ---- packing -----------------------------------------------------------------------------
    @torch.no_grad()
    def pack(self, model: WaveNet, dtype: torch.dtype) -> torch.Tensor:
        """The model's weights as one flat blob of `dtype` (CPU tensor)."""
        if model.cfg != self.cfg:
            raise BackendError("the model's config differs from the kernel layout's")
        R, G, H, S, Q, C, K = self._dims
        f64 = lambda t: t.detach().to(torch.float64).cpu()  # noqa: E731
        zeros = lambda n: torch.zeros(n, dtype=torch.float64)  # noqa: E731
        bias = lambda m, n: zeros(n) if m is None else f64(m)  # noqa: E731
        blob = torch.zeros(self.size, dtype=torch.float64)

        def put(at: int, t: torch.Tensor) -> None:
            flat = t.reshape(-1)
            blob[at:at + flat.numel()] = flat

        head = self._head_offsets()
        put(head["EMB"], f64(model.embed.weight))  # (Q, R)
        put(head["H1W"], f64(model.head[1].weight)[:, :, 0])  # (S out, S in)
        put(head["H1B"], bias(model.head[1].bias, S))
        put(head["H2W"], f64(model.head[3].weight)[:, :, 0].t())  # (S in, Q out)
        put(head["H2B"], bias(model.head[3].bias, Q))
        off = self._layer_offsets()
        for i, layer in enumerate(model.layers):
            at = head["LAYER0"] + i * off["LAYER_SIZE"]
            weight, conv_bias, cond_weight, _ = layer.weights()
            put(at + off["CW"], f64(weight).permute(2, 0, 1))  # (G, R, K) → (K, G, R)
            put(at + off["CB"], bias(conv_bias, G))
            if cond_weight is not None:
                put(at + off["CCW"], f64(cond_weight)[:, :, 0])  # (G, C)
            if layer.out is not None:
                put(at + off["RW"], f64(layer.out.weight)[:, :, 0].t())  # (R, H) → (H, R)
                put(at + off["RB"], bias(layer.out.bias, R))
            put(at + off["SW"], f64(layer.skip.weight)[:, :, 0].t())  # (S, H) → (H, S)
            put(at + off["SB"], bias(layer.skip.bias, S))
        return blob.to(dtype)

    @torch.no_grad()
    def speaker_projections(self, model: WaveNet, speaker: torch.Tensor) -> torch.Tensor:
        """speaker ids (B,) → (B, L, G) float32: every layer's projection of the speaker embedding
        (computed in float64, the gate's per-stream bias)."""
        g = model.speaker_embed.weight.detach().to(torch.float64).cpu()[speaker]  # (B, E)
        rows = [g @ layer.weights()[3].detach().to(torch.float64).cpu().t() for layer in model.layers]  # L × (B, G)
        return torch.stack(rows, dim=1).to(torch.float32).contiguous()


def target_config() -> WaveNetConfig:
    """The 30-layer model the kernel is sized for: 3 cycles of dilations 1…512, residual 64, gate 128,
    skip 256, kernel 2, 256 classes (receptive field 3,070 samples)."""
    return WaveNetConfig(quantization_channels=256, residual_channels=64, gate_channels=128, skip_channels=256,
                         kernel_size=2, layers=30, stacks=3)
