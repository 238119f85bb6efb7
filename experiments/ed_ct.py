"""CT reconstruction with energy-dissipating networks (paper Sec. 5.2, Fig. 4).

Parallel-beam Radon operator (``convexnn.solvers.operators.CT``, sparse angles) on 64 x 64 images;
surrogate energy ``1/2 ||A u - f||^2 + alpha TV_eps(u)`` (Charbonnier TV). Training: MRI slices
0-7 of ``load_mri_slices`` and natural-image patches (scikit-image samples), lagged distribution
bootstrapped on the first 10 gradient-descent iterates; projection eq. 21 (``<d, g> >= zeta
||g||^2``). One network (trained at the first noise level and alpha_train) is tested at two noise
levels and alpha in {0, alpha_train} on the scikit-image Shepp-Logan phantom and MRI slices 8-9:
PSNR and data term per iteration against gradient descent (step 1/L, Armijo), the iteration at
which ``||A u - f|| <= delta = ||noise||`` (discrepancy principle) and the PSNR there.

The network sees ``[u, A^T f / ||A||^2, g / rms(g)]`` (``normalize_grad=True``): with this
ill-conditioned operator ``||grad E|| / L`` falls by about two orders of magnitude within the
first iterations, and a network fed ``g / L`` stops using it, stalls above the discrepancy level
and drifts (docs/energy_dissipation.md, CT).

    PYTHONPATH=. python experiments/ed_ct.py            # default
    PYTHONPATH=. python experiments/ed_ct.py --quick    # CI
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import torch

from convexnn.data.restoration import load_mri_slices  # noqa: E402
from convexnn.data.training_patches import natural_image_patches  # noqa: E402
from convexnn.solvers.energies import data_plus_tv  # noqa: E402
from convexnn.solvers.energy_dissipation import (  # noqa: E402
    DescentConfig,
    DirectionNetwork,
    GradientDirection,
    HalfSpaceProjection,
    LaggedTrainingConfig,
    SmallConvNet,
    TrainingProblem,
    energy_dissipating_descent,
    train_lagged,
)
from convexnn.solvers.operators import CT  # noqa: E402
from experiments.ed_setup import default_out, setup, write_json  # noqa: E402


def resize(imgs: np.ndarray, n: int) -> torch.Tensor:
    from skimage.transform import resize as sk_resize
    out = np.stack([sk_resize(i, (n, n), anti_aliasing=True) for i in imgs])
    return torch.from_numpy(out[:, None]).float()


def noisy(op: CT, u: torch.Tensor, level: float, gen: torch.Generator):
    y = op.A(u)
    sigma = level * float(y.std())
    noise = sigma * torch.randn(y.shape, generator=gen)
    return y + noise, noise.flatten(1).norm(dim=1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--angles", type=int, default=15)
    ap.add_argument("--noise", type=float, nargs=2, default=[0.1, 0.05])
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--n-patches", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--regenerate-every", type=int, default=100)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--grad-input", choices=("normalized", "scaled"), default="normalized",
                    help="gradient channel of the network: g / rms(g) (default) or g / L "
                         "(the earlier input, for the ablation)")
    ap.add_argument("--tag", default=None, help="output name ed_ct_TAG.* (default: full/quick)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: that of experiments.ed_setup.setup, 2)")
    ap.add_argument("--out", default=default_out())
    a = ap.parse_args(argv)
    if a.quick:
        a.n_patches, a.steps, a.regenerate_every, a.iters, a.size = 32, 30, 15, 15, 32
    if a.threads is None:
        setup(a.seed)
    else:
        setup(a.seed, threads=a.threads)
    if a.tag is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", a.tag):
        ap.error(f"--tag: expected letters, digits, '_', '.' or '-', got {a.tag!r}")
    tag = a.tag or ("quick" if a.quick else "full")
    op = CT(a.angles, a.size)
    mri = load_mri_slices()
    train_imgs = torch.cat([resize(mri[:8], a.size), torch.from_numpy(
        natural_image_patches(a.n_patches, a.size, seed=a.seed)[:, None]).float()])
    from skimage.data import shepp_logan_phantom
    test_imgs = torch.cat([resize(shepp_logan_phantom()[None], a.size), resize(mri[8:], a.size)])
    gen = torch.Generator().manual_seed(a.seed)
    f_train = torch.cat([noisy(op, u[None], a.noise[0], gen)[0] for u in train_imgs])
    op_norm = op.norm(train_imgs[:1])                      # ||A||^2
    lip = op_norm + a.alpha * 8 / a.eps                     # L of data + alpha TV_eps
    problem = TrainingProblem(train_imgs, f_train,
                              lambda f: data_plus_tv(op, f, a.alpha, a.eps, lipschitz=op_norm))
    torch.manual_seed(a.seed)
    net = DirectionNetwork(SmallConvNet(3, 1, depth=4, channels=16),
                           HalfSpaceProjection(0.1 / lip, scale_with_grad=True),
                           grad_scale=1.0 if a.grad_input == "normalized" else 1 / lip,
                           normalize_grad=a.grad_input == "normalized")   # input g / rms(g)
    res = train_lagged(net, problem, LaggedTrainingConfig(
        steps=a.steps, batch_size=16, lr=1e-3, regenerate_every=a.regenerate_every,
        max_descent_steps=10, gd_scale=1 / lip, seed=a.seed, progress=not a.quiet))
    curves, summary = {}, {}
    for level in a.noise:
        for alpha in (0.0, a.alpha):
            key = f"noise{level}_alpha{alpha}"
            per = {"gd": [], "ed": []}
            for i, gt in enumerate(test_imgs):
                f, delta = noisy(op, gt[None], level, gen)
                energy = data_plus_tv(op, f, alpha, a.eps, lipschitz=op_norm)
                L_e = energy.lipschitz(gt[None])
                u0 = torch.zeros_like(gt[None])
                for name, d in (("gd", GradientDirection(1 / L_e)), ("ed", net)):
                    with torch.no_grad():
                        _, h = energy_dissipating_descent(energy, u0, d, DescentConfig(
                            max_iter=a.iters, grad_tol=0, reference=gt[None], data_range=1.0))
                    res_k = h.residual
                    hit = next((k + 1 for k, r in enumerate(res_k) if r <= float(delta)), None)
                    per[name].append({"psnr": h.psnr, "data_term": [0.5 * r**2 for r in res_k],
                                      "discrepancy_iteration": hit, "image": i,
                                      "delta": float(delta),
                                      "psnr_at_discrepancy": None if hit is None
                                      else h.psnr[hit - 1],
                                      "best_psnr": max(h.psnr), "final_psnr": h.psnr[-1]})
            curves[key] = per
            summary[key] = {m: {"mean_best_psnr": float(np.mean([r["best_psnr"] for r in v])),
                                "mean_final_psnr": float(np.mean([r["final_psnr"] for r in v])),
                                "psnr_at_10": float(np.mean([r["psnr"][min(9, len(r["psnr"]) - 1)]
                                                             for r in v])),
                                "discrepancy_iterations": [r["discrepancy_iteration"]
                                                           for r in v],
                                "psnr_at_discrepancy": [r["psnr_at_discrepancy"] for r in v]}
                            for m, v in per.items()}
    payload = {"experiment": "energy_dissipation_ct", "args": vars(a), "summary": summary,
               "training": {"final_loss": float(np.mean(res.losses[-20:])),
                            "regenerations": res.regenerations, "seconds": res.seconds,
                            "data": "MRI slices 0-7 + scikit-image sample patches"},
               "test_images": ["shepp_logan", "mri_slice_8", "mri_slice_9"], "curves": curves}
    out = Path(a.out)
    write_json(out / f"ed_ct_{tag}.json", payload)
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(14, 7))
    for j, key in enumerate(curves):
        for row, field in enumerate(("psnr", "data_term")):
            ax = fig.add_subplot(2, len(curves), row * len(curves) + j + 1)
            for m in ("gd", "ed"):
                c = curves[key][m][0][field]
                (ax.plot if field == "psnr" else ax.semilogy)(range(1, len(c) + 1), c, label=m)
            if field == "data_term":                        # discrepancy level delta^2 / 2
                ax.axhline(0.5 * curves[key]["gd"][0]["delta"] ** 2, color="k", ls=":", lw=0.8,
                           label="delta^2/2")
            ax.set_title(f"{key}: {field} (phantom)", fontsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"ed_ct_{tag}.png", dpi=90)
    if not a.quiet:
        for k, v in summary.items():
            print(k, {m: (round(s["mean_best_psnr"], 2), s["discrepancy_iterations"],
                          [None if x is None else round(x, 2) for x in s["psnr_at_discrepancy"]])
                      for m, s in v.items()})
    return payload


if __name__ == "__main__":
    main()
