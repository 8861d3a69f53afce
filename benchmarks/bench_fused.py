"""CPU time of one training shard of the default CNN, fused conv -> ReLU -> pool vs unfused.

The estimator's network (``NumpyCNNClassifier()``'s layers, float32) computes
each of its two blocks as one :class:`~skdigits.nn.ConvReLUPool2D` (the
first by im2col, the second by Winograd); the unfused twin has ``Conv2D``
with the same algorithm then ``MaxPool2D(2)`` there, and the same
parameters.  Both compute the same output bits, and gradients equal to
rounding (the first block's sums run in another order; checked here).  Each turn
times ``--shards`` forward+backward passes of 32 MNIST digits per network,
the networks taking turns shard by shard, on one thread (``threadpool_limits(1)``), in
``time.process_time``: the machine is shared, so CPU time, not wall time.
Prints per-turn ms per shard, the medians and their ratio, and also each
fused layer's forward and backward against conv + pool's.

    python benchmarks/bench_fused.py --turns 7 --shards 50
"""

import argparse
import copy
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from _common import load_average, load_mnist, machine

from skdigits import NumpyCNNClassifier
from skdigits.nn import Conv2D, ConvReLUPool2D, MaxPool2D, Network


def networks(dtype="float32"):
    """(fused, unfused): the default estimator's network and its unfused twin."""
    fused, shape = NumpyCNNClassifier(random_state=0)._make_network(784, 10, "softmax", dtype)
    fused.build(shape, np.random.RandomState(0), init="he", seed=0)
    layers = []
    for layer in fused.layers:
        if isinstance(layer, ConvReLUPool2D):
            layers += [Conv2D(layer.filters, 3, padding=layer.padding,
                              algorithm=layer.algorithm_), MaxPool2D(2)]
        else:
            layers.append(copy.copy(layer))  # configuration only
    unfused = Network(layers, "softmax", dtype).build(shape, np.random.RandomState(0), init="he",
                                                      seed=0)
    assert [type(layer) for layer in fused.layers[:2]] == [ConvReLUPool2D] * 2
    np.testing.assert_array_equal(unfused.params, fused.params)
    return fused, unfused


def shard_cpu_ms(networks, X, Y, shards):
    """Mean CPU ms of one loss-and-gradient pass over a 32-row shard, per
    network: shard by shard, the networks take turns (who goes first
    alternates), so that a change of load hits them alike."""
    totals = [0.0] * len(networks)
    for k in range(shards):
        rows = slice(32 * k, 32 * k + 32)
        order = range(len(networks)) if k % 2 == 0 else reversed(range(len(networks)))
        for i in order:
            start = time.process_time()
            networks[i].loss_and_gradient(X[rows], Y[rows], alpha=1e-4, step=k)
            totals[i] += time.process_time() - start
    return [1e3 * total / shards for total in totals]


def block_cpu_ms(blocks, X, repeat):
    """Mean CPU ms of forward (training) and backward of each block's layers
    in sequence, the blocks taking turns."""
    totals = [[0.0, 0.0] for _ in blocks]
    for k in range(repeat):
        for i in (range(len(blocks)) if k % 2 == 0 else reversed(range(len(blocks)))):
            start = time.process_time()
            out = X
            for layer in blocks[i]:
                out = layer.forward(out, training=True)
            middle = time.process_time()
            grad = np.ones_like(out)
            for layer in reversed(blocks[i]):
                grad = layer.backward(grad)
            totals[i][0] += middle - start
            totals[i][1] += time.process_time() - middle
    return [(1e3 * fwd / repeat, 1e3 * bwd / repeat) for fwd, bwd in totals]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=7)
    parser.add_argument("--shards", type=int, default=50, help="shards of 32 digits per turn")
    args = parser.parse_args(argv)
    X_all, y_all, _, _, description = load_mnist()
    n = 32 * args.shards
    X = X_all[:n].astype(np.float32).reshape(n, 28, 28, 1)
    Y = np.eye(10, dtype=np.float32)[y_all[:n]]
    fused, unfused = networks()
    print(machine())
    print(description, "|", load_average(), "at the start")

    with threadpool_limits(1):
        shard_cpu_ms([fused, unfused], X, Y, 2)  # warm-up: buffers, caches
        fused.loss_and_gradient(X[:32], Y[:32], step=0)
        grads = fused.grads.copy()
        unfused.loss_and_gradient(X[:32], Y[:32], step=0)
        np.testing.assert_allclose(grads, unfused.grads, rtol=1e-4,
                                   atol=1e-5 * np.abs(grads).max(),
                                   err_msg="fused and unfused gradients differ")

        # Each block's layers alone, on its input.
        first_block = [fused.layers[:1], unfused.layers[:2]]
        second_input = fused.layers[0].forward(X[:32], training=True).copy()
        second_block = [fused.layers[1:2], unfused.layers[2:4]]

        times = {"fused": [], "unfused": []}
        layer_times = {(block, name): [] for block in (1, 2) for name in ("fused", "unfused")}
        for turn in range(args.turns):
            for name, ms in zip(("fused", "unfused"),
                                shard_cpu_ms([fused, unfused], X, Y, args.shards)):
                times[name].append(ms)
            for block, (layers, block_input) in enumerate(
                    [(first_block, X[:32]), (second_block, second_input)], start=1):
                for name, ms in zip(("fused", "unfused"),
                                    block_cpu_ms(layers, block_input, args.shards)):
                    layer_times[block, name].append(ms)
            print(f"turn {turn + 1}: fused {times['fused'][-1]:.2f} ms, "
                  f"unfused {times['unfused'][-1]:.2f} ms per shard "
                  f"({times['fused'][-1] / times['unfused'][-1]:.3f})")

    fused_ms, unfused_ms = (statistics.median(times[k]) for k in ("fused", "unfused"))
    print(f"shard of 32, forward+backward, 1 thread, CPU time, medians of {args.turns} turns: "
          f"fused {fused_ms:.2f} ms, unfused {unfused_ms:.2f} ms, "
          f"ratio {fused_ms / unfused_ms:.3f}")
    ratios = [a / b for a, b in zip(times["fused"], times["unfused"])]
    print("ratios per turn:", ", ".join(f"{r:.3f}" for r in ratios),
          f"(median {statistics.median(ratios):.3f})")
    for (block, name), ms in layer_times.items():
        fwd = statistics.median(t[0] for t in ms)
        bwd = statistics.median(t[1] for t in ms)
        algorithm = fused.layers[block - 1].algorithm_
        label = ("ConvReLUPool2D" if name == "fused" else "Conv2D + MaxPool2D") + f" ({algorithm})"
        print(f"block {block}, {label}: forward {fwd:.2f} ms, backward {bwd:.2f} ms")
    print(load_average(), "at the end")


if __name__ == "__main__":
    main()
