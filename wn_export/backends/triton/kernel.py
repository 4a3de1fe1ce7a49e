"""The fused WaveNet step: every layer of one (or K consecutive) sample(s) in one Triton kernel.

One program per stream (grid = (B,)): a program runs the whole network for its stream, so no program
ever waits for another (the Triton interpreter runs programs one after another, and a GPU runs them
independently). Per step: embedding row of the input token → for every layer: the K−1 dilated taps
from the layer's ring buffer, dilated conv + bias (+ local conditioning 1×1, + the per-stream speaker
projection), gate tanh(a)·σ(b), residual 1×1 (+ bias, + input, × residual scale), skip 1×1 summed
(legacy r9y9 scaling optional), the layer's input written into its ring → skip scale → ReLU–1×1–ReLU–1×1
→ logits. With DRAW the kernel also draws the next token from a supplied uniform (the inverse-CDF rule
of `reference_model.sampling`, in float64, at each stream's own temperature; 0 = argmax) and feeds it
back, for `steps` samples per launch.

Ring state (the step graph's `ring` layout): `state` (B, N, R), N = Σ(K−1)·d; layer l owns rows
[offset_l, offset_l + length_l), length_l = (K−1)·d_l. At position p (samples consumed so far) tap j
(j < K−1, oldest first) is row offset_l + (p + j·d_l) mod length_l, and the layer's input of this
sample is written to row offset_l + p mod length_l (the slot tap 0 was read from).

Weights: one packed blob (`layout.KernelLayout` owns the offsets, passed as constexprs). Matrices
are stored so every tile is a (BH or BO) × (R, S or Q) block read along its contiguous axis, and the
reductions alternate axes so no vector changes layout: conv (K, G, R), cond (G, C), residual (H, R)
and skip (H, S) transposed (H = G/2 gate rows), head 1 (S, S) as [out, in], head 2 (S, Q) as [in, out].
Arithmetic is float32 whatever the weight dtype; the ring state has the weights' dtype.

Interpreter notes: tanh is written 2σ(2x) − 1 (the interpreter has no libdevice tanh); every load is
masked (out-of-bounds reads are not caught there); indices use non-negative remainders only.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _draw(logits, qm, u, temperature, Q: tl.constexpr, GREEDY: tl.constexpr):
    """(QP,) float32 logits → int64 class: greedy argmax (GREEDY, or a stream whose temperature is 0), or
    inverse CDF in float64: z = l / T, p = exp(z − max z), c = cumsum(p), first i with c_i > u · c_{Q−1}."""
    greedy = tl.argmax(tl.where(qm, logits, float("-inf")), 0).to(tl.int64)
    if GREEDY:
        tok = greedy
    else:
        sample = temperature > 0.0
        z = tl.where(qm, logits.to(tl.float64) / tl.where(sample, temperature, 1.0), float("-inf"))
        p = tl.exp(z - tl.max(z, 0))  # padded classes: exp(−inf) = 0
        cdf = tl.cumsum(p, 0)
        target = u * tl.max(cdf, 0)  # c is non-decreasing: its max is c_{Q−1}
        below = tl.sum(((cdf <= target) & qm).to(tl.int64), 0)
        tok = tl.where(sample, tl.minimum(below, Q - 1), greedy)
    return tok


@triton.jit
def _head(skip, w_ptr, sm, s, q, qm,
          S: tl.constexpr, Q: tl.constexpr, SP: tl.constexpr, QP: tl.constexpr, BO: tl.constexpr,
          H1W: tl.constexpr, H1B: tl.constexpr, H2W: tl.constexpr, H2B: tl.constexpr):
    """skip (SP,) → logits (QP,): ReLU → 1×1 (S→S) → ReLU → 1×1 (S→Q), BO hidden units at a time."""
    hidden_in = tl.maximum(skip, 0.0)
    logits = tl.zeros([QP], dtype=tl.float32)
    o = tl.arange(0, BO)
    for o0 in range(0, S, BO):
        rows = o0 + o
        om = rows < S
        w1 = tl.load(w_ptr + H1W + rows[:, None] * S + s[None, :], mask=om[:, None] & sm[None, :], other=0.0)
        hid = tl.sum(w1.to(tl.float32) * hidden_in[None, :], 1)  # (BO,)
        hid = tl.maximum(hid + tl.load(w_ptr + H1B + rows, mask=om, other=0.0).to(tl.float32), 0.0)
        w2 = tl.load(w_ptr + H2W + rows[:, None] * Q + q[None, :], mask=om[:, None] & qm[None, :], other=0.0)
        logits += tl.sum(w2.to(tl.float32) * hid[:, None], 0)  # (QP,)
    return logits + tl.load(w_ptr + H2B + q, mask=qm, other=0.0).to(tl.float32)


@triton.jit(do_not_specialize=["position", "steps"])
def wavenet_steps(
    w_ptr,  # packed weights (weight dtype), see layout.KernelLayout
    table_ptr,  # (L, 3) int32: dilation, ring offset, ring length per layer
    state_ptr,  # (B, N, R) ring state, weight dtype; updated in place
    token_ptr,  # (B,) int64: the input token of the first step
    cond_ptr,  # (steps, B, C) float32 per-sample local conditioning (read only with HAS_COND)
    speaker_ptr,  # (B, L, G) float32 per-stream speaker projections (read only with HAS_SPEAKER)
    u_ptr,  # (steps, B) float64 uniforms (read only with DRAW and not GREEDY)
    temperature_ptr,  # (B,) float64 per-stream sampling temperature, 0: greedy (read only with DRAW and not GREEDY)
    tokens_out_ptr,  # (B, steps) int64 drawn tokens (written only with DRAW)
    logits_ptr,  # (B, Q) float32: the logits of the last step
    position,  # samples consumed before this launch (int64)
    steps,  # samples to run in this launch (1 without DRAW)
    layers,  # L
    n_state,  # N rows of every stream's ring state
    residual_scale,  # √0.5 with scale_residual, else 1
    skip_scale,  # √(1/L) with scale_skip, else 1
    R: tl.constexpr, H: tl.constexpr, S: tl.constexpr, Q: tl.constexpr, C: tl.constexpr,
    K: tl.constexpr,  # dilated kernel size: 2 or 3
    RP: tl.constexpr, SP: tl.constexpr, QP: tl.constexpr, CP: tl.constexpr,  # powers of two ≥ R, S, Q, C
    BH: tl.constexpr,  # gate rows per tile
    BO: tl.constexpr,  # head hidden units per tile
    H1W: tl.constexpr, H1B: tl.constexpr, H2W: tl.constexpr, H2B: tl.constexpr,  # head offsets
    LAYER0: tl.constexpr, LAYER_SIZE: tl.constexpr,  # first layer's offset, elements per layer
    CW: tl.constexpr, CB: tl.constexpr, CCW: tl.constexpr, RW: tl.constexpr, RB: tl.constexpr,
    SW: tl.constexpr, SB: tl.constexpr,  # offsets inside a layer
    HAS_COND: tl.constexpr, HAS_SPEAKER: tl.constexpr, LEGACY_SKIP: tl.constexpr,
    DRAW: tl.constexpr, GREEDY: tl.constexpr,
):
    """The host kernel (`runner.TritonStepRunner`, `aot`): K samples per launch, ring updated in place."""
    b = tl.program_id(0)
    _steps(w_ptr, table_ptr, state_ptr, token_ptr, cond_ptr, speaker_ptr + b.to(tl.int64) * layers * (2 * H),
           u_ptr, temperature_ptr, tokens_out_ptr, logits_ptr, state_ptr, position, steps, layers, n_state,
           residual_scale, skip_scale, R, H, S, Q, C, K, RP, SP, QP, CP, BH, BO, H1W, H1B, H2W, H2B, LAYER0,
           LAYER_SIZE, CW, CB, CCW, RW, RB, SW, SB, HAS_COND, HAS_SPEAKER, LEGACY_SKIP, DRAW, GREEDY, False)


@triton.jit
def wavenet_step_plugin(
    token_ptr,  # (B,) int64
    cond_ptr,  # (B, C) float32 local conditioning of this sample (a 1-element stand-in without HAS_COND)
    speaker_ptr,  # (B,) int64 speaker ids (a 1-element stand-in without HAS_SPEAKER)
    state_ptr,  # (B, N, R) ring state (weight dtype): read only
    position_ptr,  # (1,) int64 samples consumed so far
    w_ptr,  # packed weights (weight dtype)
    table_ptr,  # (L, 3) int32 layer table
    speaker_table_ptr,  # (speakers, L, G) float32 every speaker's per-layer projection (stand-in without)
    layers,  # i32 L
    n_state,  # i32 N
    logits_ptr,  # (B, Q) float32 output
    update_ptr,  # (B, L, R) output (weight dtype): every layer's input of this sample, the ring's new rows
    R: tl.constexpr, H: tl.constexpr, S: tl.constexpr, Q: tl.constexpr, C: tl.constexpr, K: tl.constexpr,
    RP: tl.constexpr, SP: tl.constexpr, QP: tl.constexpr, CP: tl.constexpr, BH: tl.constexpr, BO: tl.constexpr,
    H1W: tl.constexpr, H1B: tl.constexpr, H2W: tl.constexpr, H2B: tl.constexpr,
    LAYER0: tl.constexpr, LAYER_SIZE: tl.constexpr,
    CW: tl.constexpr, CB: tl.constexpr, CCW: tl.constexpr, RW: tl.constexpr, RB: tl.constexpr,
    SW: tl.constexpr, SB: tl.constexpr,
    HAS_COND: tl.constexpr, HAS_SPEAKER: tl.constexpr, LEGACY_SKIP: tl.constexpr,
    RESIDUAL_SCALE: tl.constexpr, SKIP_SCALE: tl.constexpr,
):
    """The TensorRT plugin's kernel (`wn_export::WaveNetStep`): one sample, the step graph's `ring` I/O.

    Parameters in TensorRT's AOT order: the plugin's inputs, its scalar arguments, its outputs. The ring
    is not written: the new rows go to `update_ptr` and the host writes them (manifest rule `ring`)."""
    b = tl.program_id(0)
    speaker_rows = speaker_table_ptr
    if HAS_SPEAKER:
        speaker_rows = speaker_table_ptr + tl.load(speaker_ptr + b) * layers * (2 * H)
    _steps(w_ptr, table_ptr, state_ptr, token_ptr, cond_ptr, speaker_rows, logits_ptr, logits_ptr, logits_ptr,
           logits_ptr, update_ptr, tl.load(position_ptr), 1, layers, n_state, RESIDUAL_SCALE, SKIP_SCALE,
           R, H, S, Q, C, K, RP, SP, QP, CP, BH, BO, H1W, H1B, H2W, H2B, LAYER0, LAYER_SIZE,
           CW, CB, CCW, RW, RB, SW, SB, HAS_COND, HAS_SPEAKER, LEGACY_SKIP, False, False, True)


@triton.jit
def _steps(
    w_ptr, table_ptr, state_ptr, token_ptr, cond_ptr,
    speaker_rows,  # this stream's (L, G) float32 speaker projections (read only with HAS_SPEAKER)
    u_ptr, temperature_ptr, tokens_out_ptr, logits_ptr,
    update_ptr,  # (B, L, R): with RING_OUT, every layer's input of the sample goes here, not into the ring
    position, steps, layers, n_state, residual_scale, skip_scale,
    R: tl.constexpr, H: tl.constexpr, S: tl.constexpr, Q: tl.constexpr, C: tl.constexpr, K: tl.constexpr,
    RP: tl.constexpr, SP: tl.constexpr, QP: tl.constexpr, CP: tl.constexpr, BH: tl.constexpr, BO: tl.constexpr,
    H1W: tl.constexpr, H1B: tl.constexpr, H2W: tl.constexpr, H2B: tl.constexpr,
    LAYER0: tl.constexpr, LAYER_SIZE: tl.constexpr,
    CW: tl.constexpr, CB: tl.constexpr, CCW: tl.constexpr, RW: tl.constexpr, RB: tl.constexpr,
    SW: tl.constexpr, SB: tl.constexpr,
    HAS_COND: tl.constexpr, HAS_SPEAKER: tl.constexpr, LEGACY_SKIP: tl.constexpr,
    DRAW: tl.constexpr, GREEDY: tl.constexpr, RING_OUT: tl.constexpr,
):
    """The body both entry points share: `steps` samples of stream b = program_id(0)."""
    b = tl.program_id(0)
    B = tl.num_programs(0)
    G: tl.constexpr = 2 * H
    r = tl.arange(0, RP)
    rm = r < R
    s = tl.arange(0, SP)
    sm = s < S
    q = tl.arange(0, QP)
    qm = q < Q
    c = tl.arange(0, CP)
    cm = c < C
    hh = tl.arange(0, BH)
    ring = state_ptr + b.to(tl.int64) * n_state * R  # this stream's (N, R) rows
    token = tl.load(token_ptr + b)
    logits = tl.zeros([QP], dtype=tl.float32)
    for t in range(steps):
        pos = position + t
        x = tl.load(w_ptr + token * R + r, mask=rm, other=0.0).to(tl.float32)  # embedding row (RP,)
        cond = tl.zeros([CP], dtype=tl.float32)
        if HAS_COND:
            cond = tl.load(cond_ptr + (t * B + b) * C + c, mask=cm, other=0.0)
        skip = tl.zeros([SP], dtype=tl.float32)
        for l in range(layers):
            dilation = tl.load(table_ptr + 3 * l)
            offset = tl.load(table_ptr + 3 * l + 1)
            length = tl.load(table_ptr + 3 * l + 2)
            base = w_ptr + LAYER0 + l * LAYER_SIZE
            tap0 = tl.load(ring + (offset + pos % length) * R + r, mask=rm, other=0.0).to(tl.float32)
            tap1 = tl.zeros([RP], dtype=tl.float32)
            if K == 3:
                tap1 = tl.load(ring + (offset + (pos + dilation) % length) * R + r, mask=rm, other=0.0)
                tap1 = tap1.to(tl.float32)
            residual = tl.zeros([RP], dtype=tl.float32)
            skip_l = tl.zeros([SP], dtype=tl.float32)
            for h0 in range(0, H, BH):
                rows = h0 + hh
                hm = rows < H
                m2 = hm[:, None] & rm[None, :]
                wa = base + CW + rows[:, None] * R + r[None, :]  # tanh rows, tap 0
                wb = wa + H * R  # σ rows
                za = tl.load(wa, mask=m2, other=0.0).to(tl.float32) * tap0[None, :]
                zb = tl.load(wb, mask=m2, other=0.0).to(tl.float32) * tap0[None, :]
                if K == 3:
                    za += tl.load(wa + G * R, mask=m2, other=0.0).to(tl.float32) * tap1[None, :]
                    zb += tl.load(wb + G * R, mask=m2, other=0.0).to(tl.float32) * tap1[None, :]
                za += tl.load(wa + (K - 1) * G * R, mask=m2, other=0.0).to(tl.float32) * x[None, :]
                zb += tl.load(wb + (K - 1) * G * R, mask=m2, other=0.0).to(tl.float32) * x[None, :]
                a = tl.sum(za, 1) + tl.load(base + CB + rows, mask=hm, other=0.0).to(tl.float32)  # (BH,)
                g = tl.sum(zb, 1) + tl.load(base + CB + H + rows, mask=hm, other=0.0).to(tl.float32)
                if HAS_COND:
                    mc = hm[:, None] & cm[None, :]
                    wc = base + CCW + rows[:, None] * C + c[None, :]
                    a += tl.sum(tl.load(wc, mask=mc, other=0.0).to(tl.float32) * cond[None, :], 1)
                    g += tl.sum(tl.load(wc + H * C, mask=mc, other=0.0).to(tl.float32) * cond[None, :], 1)
                if HAS_SPEAKER:
                    spk = speaker_rows + l * G + rows
                    a += tl.load(spk, mask=hm, other=0.0)
                    g += tl.load(spk + H, mask=hm, other=0.0)
                # tanh(a)·σ(g) with tanh(a) = 2σ(2a) − 1, σ written out (each device-function call
                # costs the interpreter a re-patch of triton.language)
                gated = (2.0 / (1.0 + tl.exp(-2.0 * a)) - 1.0) / (1.0 + tl.exp(-g))
                gated = tl.where(hm, gated, 0.0)  # (BH,)
                wr = tl.load(base + RW + rows[:, None] * R + r[None, :], mask=m2, other=0.0)
                residual += tl.sum(wr.to(tl.float32) * gated[:, None], 0)  # (RP,)
                ws = tl.load(base + SW + rows[:, None] * S + s[None, :], mask=hm[:, None] & sm[None, :], other=0.0)
                skip_l += tl.sum(ws.to(tl.float32) * gated[:, None], 0)  # (SP,)
            if RING_OUT:  # the host writes the ring (one sample per launch)
                tl.store(update_ptr + (b.to(tl.int64) * layers + l) * R + r, x.to(update_ptr.dtype.element_ty),
                         mask=rm)
            else:  # every tap of this layer is read: overwrite the oldest slot with this sample's input
                tl.debug_barrier()
                tl.store(ring + (offset + pos % length) * R + r, x.to(state_ptr.dtype.element_ty), mask=rm)
            x = (x + residual + tl.load(base + RB + r, mask=rm, other=0.0).to(tl.float32)) * residual_scale
            skip += skip_l + tl.load(base + SB + s, mask=sm, other=0.0).to(tl.float32)
            if LEGACY_SKIP:  # r9y9 legacy: s = (s + s_l)·√0.5 for layers 1…L−1
                skip = skip * tl.where(l > 0, 0.7071067811865476, 1.0)
        logits = _head(skip * skip_scale, w_ptr, sm, s, q, qm, S, Q, SP, QP, BO, H1W, H1B, H2W, H2B)
        if DRAW:
            u = 0.0
            temperature = 1.0
            if not GREEDY:
                u = tl.load(u_ptr + t * B + b)
                temperature = tl.load(temperature_ptr + b)
            token = _draw(logits, qm, u, temperature, Q, GREEDY)
            tl.store(tokens_out_ptr + b * steps + t, token)
        tl.debug_barrier()  # this step's ring writes are visible to the next step's reads
    tl.store(logits_ptr + b * Q + q, logits, mask=qm)
