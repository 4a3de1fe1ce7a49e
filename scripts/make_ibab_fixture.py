"""Write the ibab/tensorflow-wavenet test checkpoints under tests/data/ibab/ with TensorFlow itself.

TensorFlow is not a dependency of wn-export (its reader of TensorFlow checkpoints is
`wn_export.importers.tf_checkpoint`); this script runs once, in its own environment:

    python3 -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu
    /tmp/tf/bin/python scripts/make_ibab_fixture.py tests/data/ibab

Per case it creates the variables in the order and scopes of ibab's `WaveNetModel._create_variables`
(`wavenet/embeddings`, `wavenet/causal_layer`, `wavenet/dilated_stack/layer{i}`, `wavenet/postprocessing`),
with their bias idiom `tf.Variable(value, name)`: the name lands in the `trainable` argument, so the
biases are called `Variable`, `Variable_1`, … as in every checkpoint their train.py writes (case "gc"
passes `name=` instead, the spelling of forks that fixed it). Values are random at a scale where every
layer matters. `tf.compat.v1.train.Saver` writes the checkpoint; next to it go the `wavenet_params.json`
ibab trains with and `weights.npz`, every variable's value as TensorFlow holds it, by variable name
(the tests' independent forward reads that, not the checkpoint). SHA256SUMS lists every file.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

# ibab's wavenet_params.json fields, per case; "naming": how the biases are named; "optimizer": also save
# Adam's slot variables (a Saver over all global variables, as older training scripts used)
CASES = {
    "onehot-bias": dict(filter_width=2, sample_rate=16000, dilations=[1, 2, 4, 8, 1, 2], residual_channels=8,
                        dilation_channels=6, quantization_channels=32, skip_channels=10, use_biases=True,
                        scalar_input=False, initial_filter_width=32, naming="ibab", optimizer=True),
    "onehot-nobias-k3": dict(filter_width=3, sample_rate=8000, dilations=[1, 2, 4, 1, 2, 4], residual_channels=6,
                             dilation_channels=5, quantization_channels=24, skip_channels=8, use_biases=False,
                             scalar_input=False, initial_filter_width=32, naming="ibab", optimizer=False),
    "scalar-w5": dict(filter_width=2, sample_rate=16000, dilations=[1, 2, 4, 8], residual_channels=8,
                      dilation_channels=6, quantization_channels=32, skip_channels=10, use_biases=True,
                      scalar_input=True, initial_filter_width=5, naming="ibab", optimizer=False),
    "gc": dict(filter_width=2, sample_rate=16000, dilations=[1, 2, 4, 1, 2, 4], residual_channels=8,
               dilation_channels=6, quantization_channels=32, skip_channels=10, use_biases=True,
               scalar_input=False, initial_filter_width=32, gc_channels=4, gc_cardinality=3, naming="keyword",
               optimizer=False),
}
STEP = 7  # the global step in the file name (model.ckpt-7)


def build(tf1, case: dict, rng: np.random.Generator) -> list:
    """The variables of ibab's model for `case`, created in their order and scopes."""
    def weight(name, shape):
        return tf1.Variable(rng.normal(0.0, 0.4, shape).astype(np.float32), name=name)

    def bias(name, shape):
        value = rng.normal(0.0, 0.3, shape).astype(np.float32)
        if case["naming"] == "ibab":
            return tf1.Variable(value, name)  # their idiom: `name` is taken as `trainable`
        return tf1.Variable(value, name=name)

    K, R, D = case["filter_width"], case["residual_channels"], case["dilation_channels"]
    S, Q, gc = case["skip_channels"], case["quantization_channels"], case.get("gc_channels")
    out = []
    with tf1.variable_scope("wavenet"):
        if gc:
            with tf1.variable_scope("embeddings"):
                out.append(weight("gc_embedding", [case["gc_cardinality"], gc]))
        with tf1.variable_scope("causal_layer"):
            width, channels = (case["initial_filter_width"], 1) if case["scalar_input"] else (K, Q)
            out.append(weight("filter", [width, channels, R]))
        with tf1.variable_scope("dilated_stack"):
            for i, _ in enumerate(case["dilations"]):
                with tf1.variable_scope(f"layer{i}"):
                    out += [weight("filter", [K, R, D]), weight("gate", [K, R, D]), weight("dense", [1, D, R]),
                            weight("skip", [1, D, S])]
                    if gc:
                        out += [weight("gc_gate", [1, gc, D]), weight("gc_filter", [1, gc, D])]
                    if case["use_biases"]:
                        out += [bias("filter_bias", [D]), bias("gate_bias", [D]), bias("dense_bias", [R]),
                                bias("slip_bias", [S])]
        with tf1.variable_scope("postprocessing"):
            out += [weight("postprocess1", [1, S, S]), weight("postprocess2", [1, S, Q])]
            if case["use_biases"]:
                out += [bias("postprocess1_bias", [S]), bias("postprocess2_bias", [Q])]
    return out


def write_case(tf, name: str, case: dict, root: Path, seed: int) -> None:
    tf1 = tf.compat.v1
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        variables = build(tf1, case, np.random.default_rng(seed))
        var_list = variables
        if case["optimizer"]:
            loss = tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables])
            tf1.train.AdamOptimizer(1e-3).minimize(loss, var_list=variables)
            var_list = tf1.global_variables()
        saver = tf1.train.Saver(var_list=var_list, save_relative_paths=True)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            values = {v.name[:-2]: sess.run(v) for v in variables}
            saver.save(sess, str(directory / "model.ckpt"), global_step=STEP, write_meta_graph=False)
    np.savez(directory / "weights.npz", **values)
    params = {k: v for k, v in case.items() if k not in ("naming", "optimizer", "gc_channels", "gc_cardinality")}
    (directory / "wavenet_params.json").write_text(json.dumps(params, indent=4) + "\n")


def main(root: str) -> None:
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    root = Path(root)
    for seed, (name, case) in enumerate(CASES.items()):
        write_case(tf, name, case, root, seed)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}" for p in files]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(files)} files under {root} (TensorFlow {tf.__version__})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/ibab")
