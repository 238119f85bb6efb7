"""Greedy layer-wise convex training against end-to-end unrolled networks (paper Sec. 4.3).

MNIST denoising, Gaussian sigma = 0.5, k = 3. Greedy: `GreedyConvexStack` of `--depth` blocks,
each the convex dual (eq. 4) solved with hinge-penalised Adam (`--patterns` sampled patterns,
`--epochs` epochs) on the previous block's output; blocks 2.. residual (Cor. 1.1). Depth d is
the first d blocks of the same stack (greedy training never revisits a block). End to end:
`UnrolledDenoiser` with T = 1..depth two-layer blocks of `--filters` filters (T = 2 is the
paper's four-layer network), Adam on the same objective. Both use the same beta (sum scale,
BETA_MEAN x training pixels) for every block, so the objectives are comparable:
`1/2 ||f(x) - y||^2 + sum_blocks beta/2 (||U||^2 + ||alpha||^2)`, which for a greedy stack
equals `data + sum_b beta R_b` at its eq. 5 primal. Test objective: test data term + the same
regulariser (the trainers' convention). The same stack is also solved exactly (cvxpy) on a
small crop, where the depth relation of `convexnn.deep` holds exactly. Interpretability:
cluster map (eq. 8) of every greedy block and every end-to-end iteration on clean test digits,
and the filters of every block.

Writes `results/mnist_greedy_deep[_quick].json`, `_depth.png` (objective and PSNR against
depth), `_recon.png`, `_clusters.png`, `_filters_block{b}.png` and the stack
`_stack.safetensors` (`convexnn interpret` reads it).

    PYTHONPATH=. python experiments/mnist_greedy_deep.py            # ~5 min on 1 busy core
    PYTHONPATH=. python experiments/mnist_greedy_deep.py --quick    # CI (under a minute)
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from mnist_interpret import (  # noqa: E402
    DATA_NOTE,
    base_parser,
    exact_subset,
    finish_figure,
    ink_mask,
    train_unrolled_net,
)

from convexnn import interpret as ci  # noqa: E402
from convexnn.analysis.plotting import psnr, save_reconstruction_grid  # noqa: E402
from convexnn.deep import GreedyConvexStack, save_stack  # noqa: E402
from convexnn.model.losses import Loss  # noqa: E402
from convexnn.solve.adam.solver import AdamConfig  # noqa: E402
from experiments.mnist_setup import BETA_MEAN, load_data, write_json  # noqa: E402


def scores(predict, reg: float, data: dict) -> dict[str, float]:
    """Objective (sum and per pixel), data term per pixel and mean PSNR on train and test."""
    out: dict[str, float] = {}
    with torch.no_grad():
        for split, (a, b) in data.items():
            pred = predict(a.to(torch.float64))
            b = b.to(torch.float64)
            fit = float(Loss("squared")(pred, b, "sum"))
            out[f"{split}_objective"] = fit + reg
            out[f"{split}_objective_per_pixel"] = (fit + reg) / b.numel()
            out[f"{split}_data_per_pixel"] = fit / b.numel()
            out[f"{split}_psnr"] = sum(psnr(pred[i, 0].numpy(), b[i, 0].numpy())
                                       for i in range(b.shape[0])) / b.shape[0]
    return out


def plot_depth(path: Path, rows: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("train_objective_per_pixel", "train objective / pixel"),
            ("test_objective_per_pixel", "test objective / pixel"),
            ("test_psnr", "test PSNR [dB]")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (key, label) in zip(axes, keys, strict=True):
        for method, marker in (("greedy convex", "o-"), ("end-to-end", "s--")):
            pts = [(r["depth"], r[key]) for r in rows if r["method"] == method]
            ax.plot(*zip(*pts, strict=True), marker, label=method)
        ax.set_xlabel("two-layer blocks")
        ax.set_ylabel(label)
        ax.set_xticks(sorted({r["depth"] for r in rows}))
        ax.grid(alpha=0.3)
    axes[0].legend()
    finish_figure(fig, path, "greedy layer-wise convex training vs end-to-end unrolled "
                             "(MNIST, sigma 0.5)")


def main(argv=None) -> dict:
    ap = base_parser(__doc__)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--patterns", type=int, default=500, help="sampled patterns per block")
    ap.add_argument("--epochs", type=int, default=60, help="Adam epochs per greedy block")
    ap.add_argument("--filters", type=int, default=64, help="filters per end-to-end block")
    ap.add_argument("--epochs-e2e", type=int, default=40)
    ap.add_argument("--lr-e2e", type=float, default=1e-2)
    ap.add_argument("--n-cluster", type=int, default=8, help="clean test digits clustered")
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.n_test, a.patterns, a.epochs = 25, 25, 60, 3
        a.filters, a.epochs_e2e, a.n_cluster = 16, 5, 4
    torch.set_num_threads(1)
    out, tag = Path(a.out), "mnist_greedy_deep" + ("_quick" if a.quick else "")
    t_all = time.perf_counter()
    x, y, xe, ye = load_data(a.n_train, a.n_test, a.sigma)
    beta = BETA_MEAN * x.shape[0] * x.shape[2] * x.shape[3]
    data = {"train": (x, y), "test": (xe, ye)}

    t = time.perf_counter()
    stack = GreedyConvexStack(
        n_blocks=a.depth, n_patterns=a.patterns, beta=beta, solver="adam", seed=0,
        solver_config=AdamConfig(epochs=a.epochs, batch_size=25, progress=False, device="cpu",
                                 eval_every=a.epochs)).fit(x, y)
    t_greedy = time.perf_counter() - t
    save_stack(stack, out / f"{tag}_stack.safetensors")
    rows = []
    for d in range(1, a.depth + 1):
        rows.append({"method": "greedy convex", "depth": d,
                     **scores(lambda z, d=d: stack.predict(z, n_blocks=d),
                              stack.regularizer(d), data)})
    rows[-1]["seconds"] = t_greedy
    rebuilt = stack.to_primal()
    rebuilt_train = rebuilt.objective(x, y, beta)

    # the same greedy stack solved exactly (cvxpy) on a small crop: the depth relation is exact
    t = time.perf_counter()
    xs, ys, p_small, small = exact_subset(x, y, a.quick)
    exact = GreedyConvexStack(n_blocks=a.depth, n_patterns=p_small, seed=0, solver="cvxpy",
                              beta=BETA_MEAN * ys.numel()).fit(xs, ys)
    exact_rows = [{**h, "stack_objective": exact.objective(xs, ys, n_blocks=h["block"])}
                  for h in exact.history_]
    t_exact = time.perf_counter() - t

    nets = {}
    for depth in range(1, a.depth + 1):
        t = time.perf_counter()
        net, res = train_unrolled_net(x, y, xe, ye, a.filters, beta, a.epochs_e2e,
                                      iterations=depth, lr=a.lr_e2e)
        nets[depth] = net.double()
        rows.append({"method": "end-to-end", "depth": depth, "status": res.status,
                     **scores(nets[depth], 0.5 * beta * float(net.weight_decay().detach()), data),
                     "seconds": time.perf_counter() - t})

    # interpretability: every greedy block / end-to-end iteration clustered on clean digits
    images = ye[:a.n_cluster].double()
    maps, blocks = [], []
    for b, (block, z) in enumerate(stack.stages(images), start=1):
        cl = ci.cluster_patches(block, z, a.clusters)
        maps.append((f"greedy block {b}", cl))
        ci.save_filter_figure(out / f"{tag}_filters_block{b}.png", block,
                           title=f"greedy block {b}: largest path filters and |DFT|")
        blocks.append({"block": b, "sparsity": ci.path_sparsity(block).to_dict(),
                       "clusters": cl.summary(), **stack.history_[b - 1]})
    e2e = nets[min(2, a.depth)]
    for i, (block, z) in enumerate(e2e.stages(images), start=1):
        maps.append((f"end-to-end it. {i}", ci.cluster_patches(block, z, a.clusters)))
    ink = ink_mask(images)
    similarity = [{"a": p, "b": q, **ci.cluster_similarity(cp, cq),
                   "ink_pixels": ci.cluster_similarity(cp, cq, ink)}
                  for i, (p, cp) in enumerate(maps) for q, cq in maps[i + 1:]]
    ci.save_cluster_maps(out / f"{tag}_clusters.png", images, [(n, c.labels) for n, c in maps],
                      a.clusters, "k-means of active nonzero paths per block (eq. 8): greedy "
                                  "convex blocks and end-to-end iterations")
    show = xe[:4].double()
    with torch.no_grad():
        cols = [("clean", ye[:4, 0]), ("noisy", show[:, 0])] + [
            (f"greedy d={d}", stack.predict(show, n_blocks=d)[:, 0])
            for d in range(1, a.depth + 1)] + [
            (f"e2e T={d}", nets[d](show)[:, 0]) for d in range(1, a.depth + 1)]
    save_reconstruction_grid(out / f"{tag}_recon.png", [(n, c.double().numpy()) for n, c in cols])
    plot_depth(out / f"{tag}_depth.png", rows)

    payload = {
        "experiment": "mnist_greedy_deep", "quick": a.quick, "sigma": a.sigma,
        "n_train": a.n_train, "n_test": a.n_test, "kernel_size": 3,
        "data": DATA_NOTE,
        "beta_sum": beta, "beta_mean": BETA_MEAN,
        "greedy": {"solver": "adam", "patterns_per_block": a.patterns, "epochs": a.epochs,
                   "residual": "blocks 2.. (Cor. 1.1)", "seconds": t_greedy,
                   "rebuilt_primal_train_objective": rebuilt_train, "blocks": blocks},
        "greedy_exact_small": {"solver": "cvxpy", "setting": small,
                               "beta_sum": BETA_MEAN * ys.numel(),
                               "seconds": t_exact, "blocks": exact_rows},
        "end_to_end": {"filters_per_block": a.filters, "epochs": a.epochs_e2e,
                       "lr": a.lr_e2e, "residual": "blocks 2.."},
        "results": rows,
        "cluster_similarity": similarity,
        "seconds_total": time.perf_counter() - t_all,
    }
    write_json(out / f"{tag}.json", payload)
    if not a.quiet:
        print(f"{'method':<14} {'depth':>5} {'train obj/px':>12} {'test obj/px':>12} "
              f"{'test PSNR':>9}")
        for r in rows:
            print(f"{r['method']:<14} {r['depth']:>5} {r['train_objective_per_pixel']:>12.5f} "
                  f"{r['test_objective_per_pixel']:>12.5f} {r['test_psnr']:>9.2f}")
        for h in exact_rows + [dict(r, solver="adam") for r in stack.history_]:
            print(f"{h.get('solver', 'cvxpy'):>5} block {h['block']}: dual objective "
                  f"{h['dual_objective']:.6g}, data loss before {h['data_loss_before']:.6g}, "
                  f"after {h['data_loss_after']:.6g}, worse than v = w = 0: "
                  f"{h['worse_than_zero_block']}")
        print(f"wrote {out / tag}.json ({payload['seconds_total']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
