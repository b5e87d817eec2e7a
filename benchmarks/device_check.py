"""The device check: one script that measures lab on a GPU machine, in about 8 minutes.

Every part has a time budget (450 s for the parts together; the unit tests are stopped after 240 s),
and a part that does not fit is skipped with its reason. Parts, in the order they run:

1. ``steps``: steps/s of lab's FixMatch step (``train.fit``, seeds vmapped as ``experiment.run``
   trains them, with the FixMatch protocol's optimizer and EMA of the weights from
   ``preset=fixmatch_cifar10``): the digits CNN with 1 seed and 8 seeds; WRN-28-2 at the protocol's
   batch (64 labeled + 7 x 64 unlabeled, 32x32x3 random data) and views (flips, RandAugment) in
   float32 and bfloat16;
2. ``torch``: the same WRN-28-2 FixMatch step in PyTorch, written the way USB writes it (one
   forward pass over the concatenated batch, SGD with Nesterov momentum and its weight-decay
   groups, an EMA of the weights), in the same process; reported as the ratio lab / PyTorch.
   lab's step draws its batches and makes its weak and strong views on the device; USB's
   augmentation runs in DataLoader workers, so the PyTorch step gets ready-made tensors;
3. ``mnist``: a short learning run: FixMatch (and the supervised baseline) on MNIST with 10
   labels per class, 8 seeds vmapped, the CNN; accuracy and wall time;
4. ``tests``: the test suite without the notebooks, on the accelerator
   (``LAB_TEST_PLATFORM``, see conftest.py; float32 matmuls at full precision so that the
   CPU-made expectations apply to float tolerance). Test modules that import a package this
   machine lacks are reported as collection errors, naming the module;
5. ``fashion``: if time is left and ``--data`` holds it, Fashion-MNIST with the CNN at 4 / 25 /
   100 labels per class, 5 seeds: FixMatch and FlexMatch vs supervised vs LogisticRegression.

How to run it, on a Linux machine with an NVIDIA GPU, from the repository root::

    pip install -e '.[dev,bench,cuda12]'   # '.[dev,bench,cuda13]' for CUDA 13; bench: PyTorch, for part 2
    pip install pytest-xdist               # optional: part 4 then runs the tests in 8 workers
    lab data download mnist --data-dir ~/lab-data/mnist                  # from lab.data.MIRRORS, SHA-256 checked
    lab data download fashion_mnist --data-dir ~/lab-data/fashion-mnist  # optional: part 5
    python benchmarks/device_check.py --data ~/lab-data --out runs/device_check 2>&1 | tee device_check.log

``--data DIR`` is a folder laid out as ``$LAB_DATA`` is (README, "Data"): one subfolder per dataset, each
holding the four IDX files
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``; raw or ``.gz``, ``-idx`` or ``.idx`` in the name)::

    DIR/mnist/           MNIST (part 3)
    DIR/fashion-mnist/   Fashion-MNIST (part 5); on Debian or Ubuntu also
                         `apt-get install dataset-fashion-mnist`, then copy /usr/share/datasets/fashion-mnist/*.gz

Without ``--data`` (or without a subfolder) the parts that need it are skipped, saying so.
``--parts`` runs some parts only, e.g. ``--parts steps torch``.

It writes ``device_check.json`` (every figure, the machine and the library versions) and
``device_check.md`` (a section for benchmarks/RESULTS.md that names the machine: CPU model and
cores, memory, the GPUs as JAX reports them, the versions of jax, jaxlib, flax, optax, numpy and
torch) to ``--out`` (default ``runs/device_check``, or ``$OUT`` when that variable is set). Both
are rewritten after every part, so a run cut short still leaves what it measured. To publish
the figures, paste ``device_check.md`` into benchmarks/RESULTS.md and commit it with
``device_check.json``.

On the CPU, ``--smoke`` runs every part at toy sizes (digits in place of MNIST, a few steps,
one small test file) in a few minutes; tests/test_device_check.py runs it so. Its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # lab from this checkout, installed or not

PARTS = ("steps", "torch", "mnist", "tests", "fashion")

# Sizes of a real run, and of --smoke (a CPU end-to-end check of this script, not a measurement).
FULL = {
    "digits_model": "cnn", "batch": 64, "mu": 7, "seeds": 8, "digits_steps": 500, "wrn_steps": 100, "wrn": {"depth": 28, "widen": 2}, "wrn_precisions": ("float32", "bfloat16"),
    "wrn_pool": (4000, 10000), "torch_steps": 100, "mnist_dataset": "mnist", "mnist_steps": 3000,
    "mnist_seeds": 8, "mnist_methods": ("fixmatch", "supervised"), "fashion_steps": 2000, "fashion_seeds": 5, "fashion_budgets": (4, 25, 100),
    "tests": ["tests"], "tests_timeout_s": 240, "budget_s": 450,
}
SMOKE = {
    "digits_model": "mlp", "batch": 4, "mu": 2, "seeds": 2, "digits_steps": 2, "wrn_steps": 2, "wrn": {"depth": 10, "widen": 1}, "wrn_precisions": ("float32",),
    "wrn_pool": (40, 80), "torch_steps": 1, "mnist_dataset": "digits", "mnist_steps": 4,
    "mnist_seeds": 2, "mnist_methods": ("fixmatch",), "fashion_steps": 2, "fashion_seeds": 2, "fashion_budgets": (1,),
    "tests": ["tests/test_validate.py"], "tests_timeout_s": 120, "budget_s": 300,
}


class Skip(Exception):
    """A part (or row) that cannot run here; the message says why and lands in the report."""


# --------------------------------------------------------------------------- lab's step


def protocol() -> dict[str, Any]:
    """The FixMatch protocol's fields (``preset=fixmatch_cifar10``): optimizer, schedule, weight decay, EMA,
    μ and the views, WRN-28-2; the sizes of ``--smoke`` override some."""
    from lab import experiment

    return experiment.PRESETS["fixmatch_cifar10"]


def fixmatch_rate(model_name: str, model_kwargs: dict, method_kwargs: dict, x, y, num_labeled: int, *, seeds: int,
                  steps: int, batch: int, precision: str = "float32") -> dict[str, Any]:
    """Steps/s of lab's FixMatch step on ``x``/``y`` (the first ``num_labeled`` rows labeled) with the
    protocol's optimizer and weight EMA, ``seeds`` runs vmapped as ``experiment.run`` trains them. One ``fit``
    compiles and warms up; a second, from its state, is timed (``fit`` reports compilation apart)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from lab import models, optim, semisupervised, train

    train.enable_compilation_cache()  # the timed fit compiles the same program again: a cache hit
    fields = protocol()
    input_shape, num_classes = tuple(x.shape[1:]), int(y.max()) + 1
    objective = semisupervised.make_method("fixmatch", input_shape=input_shape, **method_kwargs)
    tx = optim.make_optimizer(fields["optimizer"], fields["learning_rate"], schedule=fields["schedule"],
                              total_steps=fields["steps"], weight_decay=fields["weight_decay"],
                              weight_decay_mode=fields["weight_decay_mode"])

    def make_module(seed):
        return models.make_model(model_name, input_shape, num_classes, seed=seed, **model_kwargs)

    def initial_state(seed):
        _, params, model_state = nnx.split(make_module(seed), nnx.Param, ...)
        objective_state = objective.init_objective_state(params, model_state)
        return train.create_train_state(params, model_state, tx, seed, objective_state=objective_state,
                                        ema_decay=fields["ema_decay"])

    model, _, _ = train.Graphs.split(nnx.eval_shape(lambda: make_module(0)))
    state = jax.jit(jax.vmap(initial_state))(jnp.arange(seeds))
    x, y = jnp.asarray(x), jnp.asarray(y)
    pools = {"labeled": {"x": x[:num_labeled], "y": y[:num_labeled]}, "unlabeled": {"x": x, "y": y}}

    def fit(state, until):
        return train.fit(model, state, tx, objective, pools, steps=until, batch_size=batch, eval_every=steps,
                         seed_axis=True, precision=precision, progress=False)

    warm = fit(state, steps)
    timed = fit(warm.state, 2 * steps)
    return {
        "steps_per_s": round(steps / timed.wall_time_s["train"], 2),
        "compile_s": round(warm.wall_time_s["compile"], 1),
        "seeds": seeds, "batch": f"{batch} + {objective.mu} x {batch}", "steps_timed": steps,
        "final_loss": round(float(np.mean(timed.history[-1]["train_loss"])), 4),
    }


def part_steps(sizes: dict, report: dict) -> dict:
    import numpy as np

    from lab import data

    rows, notes = {}, {}
    digits = data.digits()
    for seeds in (1, sizes["seeds"]):  # digits: FixMatch's default views (no flips for digits)
        rows[f"digits {sizes['digits_model']}, {seeds} seed{'s' if seeds > 1 else ''}"] = fixmatch_rate(
            sizes["digits_model"], {}, {"mu": sizes["mu"]}, digits.x_train, digits.y_train, 40, seeds=seeds,
            steps=sizes["digits_steps"], batch=sizes["batch"])
    wrn = "wrn-{depth}-{widen}".format(**sizes["wrn"])
    method_kwargs = {**protocol()["method_kwargs"], "mu": sizes["mu"]}
    notes[f"{wrn} step"] = ("the FixMatch protocol's (preset=fixmatch_cifar10): "
                            + ", ".join(f"{name}={value}" for name, value in method_kwargs.items())
                            + ", SGD-Nesterov with L2 decay, EMA of the weights")
    rng = np.random.default_rng(0)
    labeled, pool = sizes["wrn_pool"]
    x = rng.random((pool, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, pool).astype(np.int32)
    for precision in ("float32", "bfloat16"):
        if precision not in sizes["wrn_precisions"]:
            notes[f"{wrn} {precision}"] = "skipped: --smoke compiles one WRN step only (a minute on a CPU)"
            continue
        rows[f"{wrn}, 1 seed, {precision}"] = fixmatch_rate(
            "wrn", sizes["wrn"], method_kwargs, x, y, labeled, seeds=1, steps=sizes["wrn_steps"],
            batch=sizes["batch"], precision=precision)
    return {"rows": rows, "notes": notes}


# ------------------------------------------------------------------ PyTorch, USB's way


def torch_wide_resnet(depth: int, widen: int, num_classes: int = 10):
    """USB's ``semilearn/nets/wrn/wrn.py`` (after FixMatch's): pre-activation blocks, BatchNorm momentum 0.001,
    leaky ReLU 0.1, biased convolutions; 1.47 M parameters for WRN-28-2 with 10 classes."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, in_planes, out_planes, stride):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(in_planes, momentum=0.001, eps=0.001)
            self.relu1 = nn.LeakyReLU(negative_slope=0.1)
            self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=True)
            self.bn2 = nn.BatchNorm2d(out_planes, momentum=0.001, eps=0.001)
            self.relu2 = nn.LeakyReLU(negative_slope=0.1)
            self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=True)
            self.equal_in_out = in_planes == out_planes
            self.shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=True)

        def forward(self, x):
            if not self.equal_in_out:  # the first block of a stage: its shortcut sees the activated input
                x = self.relu1(self.bn1(x))
            else:
                out = self.relu1(self.bn1(x))
            out = self.relu2(self.bn2(self.conv1(out if self.equal_in_out else x)))
            out = self.conv2(out)
            return torch.add(x if self.equal_in_out else self.shortcut(x), out)

    def group(n, in_planes, out_planes, stride):
        return nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1) for i in range(n)
        ])

    class WideResNet(nn.Module):
        def __init__(self):
            super().__init__()
            channels = [16, 16 * widen, 32 * widen, 64 * widen]
            n = (depth - 4) // 6
            self.conv1 = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=True)
            self.block1 = group(n, channels[0], channels[1], 1)
            self.block2 = group(n, channels[1], channels[2], 2)
            self.block3 = group(n, channels[2], channels[3], 2)
            self.bn1 = nn.BatchNorm2d(channels[3], momentum=0.001, eps=0.001)
            self.relu = nn.LeakyReLU(negative_slope=0.1)
            self.classifier = nn.Linear(channels[3], num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
                elif isinstance(m, nn.BatchNorm2d):
                    m.weight.data.fill_(1)
                    m.bias.data.zero_()
                elif isinstance(m, nn.Linear):
                    nn.init.xavier_normal_(m.weight.data)
                    m.bias.data.zero_()

        def forward(self, x):
            out = self.block3(self.block2(self.block1(self.conv1(x))))
            out = self.relu(self.bn1(out))
            out = torch.nn.functional.adaptive_avg_pool2d(out, 1).flatten(1)
            return self.classifier(out)

    return WideResNet()


def torch_fixmatch_rate(sizes: dict) -> dict[str, Any]:
    """Steps/s of USB's FixMatch train step (``use_cat=True``) for WRN on random 32x32x3 batches."""
    try:
        import torch
    except ImportError:
        raise Skip("torch is not importable here") from None
    import torch.nn.functional as F

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = torch_wide_resnet(**sizes["wrn"]).to(device).train()
    # USB's get_optimizer: no weight decay for biases and BatchNorm, SGD with Nesterov momentum.
    decay = [p for name, p in model.named_parameters() if "bn" not in name and "bias" not in name]
    no_decay = [p for name, p in model.named_parameters() if "bn" in name or "bias" in name]
    optimizer = torch.optim.SGD([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=0.03,
                                momentum=0.9, weight_decay=5e-4, nesterov=True)
    total_steps = 2**20
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, torch.cos(torch.tensor(7 * torch.pi * step / (16 * total_steps))).item()))
    ema = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch, mu = sizes["batch"], sizes["mu"]
    x_lb = torch.rand(batch, 3, 32, 32, device=device)
    y_lb = torch.randint(0, 10, (batch,), device=device)
    x_ulb_w = torch.rand(mu * batch, 3, 32, 32, device=device)
    x_ulb_s = torch.rand(mu * batch, 3, 32, 32, device=device)

    def step():
        logits = model(torch.cat((x_lb, x_ulb_w, x_ulb_s)))
        logits_x_lb = logits[:batch]
        logits_x_ulb_w, logits_x_ulb_s = logits[batch:].chunk(2)
        sup_loss = F.cross_entropy(logits_x_lb, y_lb, reduction="mean")
        probs = torch.softmax(logits_x_ulb_w.detach(), dim=-1)
        confidence, pseudo_label = probs.max(dim=-1)
        mask = confidence.ge(0.95).float()
        unsup_loss = (F.cross_entropy(logits_x_ulb_s, pseudo_label, reduction="none") * mask).mean()
        loss = sup_loss + 1.0 * unsup_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():  # USB's EMA hook, every step
            for name, p in model.named_parameters():
                ema[name] = 0.001 * p.detach() + 0.999 * ema[name]
        return loss

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(1 if device.type == "cpu" else 10):  # warm-up: cuDNN's choices, allocator
        step()
    synchronize()
    tic = time.perf_counter()
    for _ in range(sizes["torch_steps"]):
        loss = step()
    synchronize()
    seconds = time.perf_counter() - tic
    return {
        "steps_per_s": round(sizes["torch_steps"] / seconds, 2), "device": str(device),
        "torch": torch.__version__, "final_loss": round(loss.item(), 4), "batch": f"{batch} + {mu} x {batch}",
        "steps_timed": sizes["torch_steps"],
    }


def part_torch(sizes: dict, report: dict) -> dict:
    wrn = "wrn-{depth}-{widen}".format(**sizes["wrn"])
    result = {"rows": {f"PyTorch (USB's step) {wrn}, float32": torch_fixmatch_rate(sizes)}, "notes": {}}
    lab_row = report["parts"].get("steps", {}).get("rows", {}).get(f"{wrn}, 1 seed, float32")
    torch_rate = result["rows"][f"PyTorch (USB's step) {wrn}, float32"]["steps_per_s"]
    if lab_row is None:
        result["notes"]["ratio"] = f"no lab / PyTorch ratio: lab's {wrn} float32 row was not measured (see part steps)"
    else:
        result["lab_over_pytorch"] = round(lab_row["steps_per_s"] / torch_rate, 3)
    return result


# --------------------------------------------------------------------- learning runs


def part_mnist(sizes: dict, report: dict, data_root: Path | None) -> dict:
    from lab import experiment

    config = {
        "dataset": sizes["mnist_dataset"], "model": sizes["digits_model"], "labels_per_class": 10,
        "seeds": list(range(sizes["mnist_seeds"])), "steps": sizes["mnist_steps"],
        "eval_every": sizes["mnist_steps"], "batch_size": 64, "learning_rate": 3e-3,
    }
    notes = {}
    if config["dataset"] == "mnist":
        folder = None if data_root is None else data_root / "mnist"
        if folder is None or not folder.is_dir():
            raise Skip(f"no MNIST files (pass --data DIR with DIR/mnist holding the IDX files; looked at {folder})")
        config["data_dir"] = str(folder)
    else:
        notes["dataset"] = "smoke: digits in place of MNIST"
    rows = {}
    methods = {"fixmatch": {"setup": "semi_supervised", "method": "fixmatch"}, "supervised": {"setup": "supervised"}}
    for label in sizes["mnist_methods"]:
        fields = methods[label]
        tic = time.perf_counter()
        result = experiment.run({**config, **fields}, progress=False)
        summary = result.summary()["accuracy"]
        rows[label] = {
            "accuracy_mean": round(summary["mean"], 4), "accuracy_std": round(summary["std"], 4),
            "per_seed": [round(a, 4) for a in result.metrics["accuracy"]],
            "wall_s": round(time.perf_counter() - tic, 1), "wall_time_s": result.wall_time_s,
        }
    return {"config": config, "rows": rows, "notes": notes}


def part_fashion(sizes: dict, report: dict, data_root: Path | None) -> dict:
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from label_efficiency import peer_accuracies

    from lab import data, experiment

    folder = None if data_root is None else data_root / "fashion-mnist"
    if folder is None or not folder.is_dir():
        raise Skip(f"no Fashion-MNIST files (DIR/fashion-mnist with the IDX files; looked at {folder})")
    dataset = data.fashion_mnist(data_dir=folder)
    seeds = list(range(sizes["fashion_seeds"]))
    rows: dict[str, dict[str, list[float]]] = {}
    for k in sizes["fashion_budgets"]:
        for seed in seeds:
            accuracy = peer_accuracies(dataset, k, seed, ["LogisticRegression"])["sklearn LogisticRegression"]
            rows.setdefault("sklearn LogisticRegression", {}).setdefault(str(k), []).append(round(accuracy, 4))
        for label, fields in (("supervised", {"setup": "supervised"}),
                              ("fixmatch", {"setup": "semi_supervised", "method": "fixmatch"}),
                              ("flexmatch", {"setup": "semi_supervised", "method": "flexmatch"})):
            result = experiment.run({
                "dataset": "fashion_mnist", "data_dir": str(folder), "model": "cnn", "labels_per_class": k,
                "seeds": seeds, "steps": sizes["fashion_steps"], "eval_every": sizes["fashion_steps"],
                "learning_rate": 3e-3, **fields}, progress=False)
            rows.setdefault(f"lab {label}", {})[str(k)] = [round(a, 4) for a in result.metrics["accuracy"]]
    means = {name: {k: round(float(np.mean(v)), 4) for k, v in by_k.items()} for name, by_k in rows.items()}
    return {"rows": rows, "means": means, "notes": {}, "steps": sizes["fashion_steps"], "seeds": seeds}


# ----------------------------------------------------------------------------- tests


def part_tests(sizes: dict, report: dict, out: Path, seconds: float) -> dict:
    import jax

    junit = out / "device_check_tests.xml"
    command = [sys.executable, "-m", "pytest", *sizes["tests"], "-p", "no:cacheprovider", "-q", "-rfE",
               "-o", "addopts=", "--ignore=tests/data", "--ignore=tests/test_notebooks.py",
               "--continue-on-collection-errors", f"--junitxml={junit}"]
    if sizes is FULL and importlib.util.find_spec("xdist"):  # pytest-xdist, when installed: 8 workers share the GPU
        command += ["-n", "8"]
    # A JAX_PLATFORMS value: "gpu" would also ask for ROCm's backend and fail, so an NVIDIA GPU is "cuda".
    platform_name = os.environ.get("LAB_TEST_PLATFORM") or {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
    environment = dict(os.environ, LAB_TEST_PLATFORM=platform_name, JAX_DEFAULT_MATMUL_PRECISION="highest",
                       XLA_PYTHON_CLIENT_PREALLOCATE="false", LAB_PROGRESS="off")
    tic = time.perf_counter()
    # A process group of its own, so that a timeout stops pytest's workers too (they hold the GPU).
    with subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True) as process:
        try:
            output, _ = process.communicate(timeout=seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            timed_out = True
    result = {"platform": platform_name, "command": " ".join(command[1:]), "wall_s": round(time.perf_counter() - tic, 1),
              "timed_out": timed_out, "notes": {}}
    if timed_out or not junit.exists():
        what = f"stopped after {seconds:.0f} s" if timed_out else f"pytest wrote no report (exit status {process.returncode})"
        result["notes"]["tests"] = f"{what}; the end of its output: {output[-1500:]}"
        return result
    suite = ElementTree.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {name: int(suite.get(name, 0)) for name in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = []
    for case in suite.iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            message = (problem.get("message") or "").splitlines()[0][:200] if problem.get("message") else ""
            failed.append(f"{case.get('classname')}::{case.get('name')}: {message}")
    missing = sorted(set(re.findall(r"No module named '([\w.]+)'", output)))
    result.update(counts=counts, failed=failed[:40], missing_modules=missing)
    junit.unlink()  # its content is in the JSON: --out keeps the two files a reader needs
    return result


# ---------------------------------------------------------------------------- report


# The libraries whose versions the Markdown section names (the JSON has Python's and lab's too).
REPORTED_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch")


def environment() -> dict[str, Any]:
    import jax

    from lab import devices, provenance

    return {
        "device": devices.describe(), "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "versions": {**provenance.library_versions(), **provenance.package_versions(["torch"])},
        "host": provenance.host(), "machine": provenance.machine(), "date": provenance.utc_now(),
        "git_commit": provenance.git_commit(ROOT),
    }


def machine_line(env: dict[str, Any]) -> str:
    """The machine and the libraries behind the figures: what a reader needs to compare them with their own."""
    machine, versions = env["machine"], env["versions"]
    memory = "" if machine["memory_bytes"] is None else f", {machine['memory_bytes'] / 2**30:.0f} GiB of memory"
    libraries = ", ".join(f"{name} {versions.get(name) or '(not installed)'}" for name in REPORTED_LIBRARIES)
    return (f"Machine: {machine['cpu']} ({machine['cores']} cores{memory}); devices: {env['device']} "
            f"(JAX backend `{env['backend']}`); {libraries}; Python {versions['python']}.")


def markdown(report: dict) -> str:
    env = report["environment"]
    smoke = ", smoke: numbers mean nothing" if report["smoke"] else ""
    lines = [
        f"## Device check on {env['device']} ({env['date'][:10]}{smoke})",
        "",
        f"`{report['command']}` at commit {str(env['git_commit'])[:10]}, {report['wall_s']:.0f} s in all.",
        "",
        machine_line(env),
        "",
    ]
    parts = report["parts"]
    for name in PARTS:
        part = parts.get(name)
        lines.append(f"### {name}")
        lines.append("")
        if part is None or "skipped" in part:
            lines += [f"Skipped: {part['skipped'] if part else 'not run'}", ""]
            continue
        if "error" in part:
            lines += [f"Failed: {part['error']}", ""]
            continue
        if name in ("steps", "torch"):
            lines += ["| step | batch | seeds | steps/s | compile s |", "| --- | --- | ---: | ---: | ---: |"]
            for label, row in part["rows"].items():
                lines.append(f"| {label} | {row['batch']} | {row.get('seeds', 1)} | {row['steps_per_s']:,} | "
                             f"{row.get('compile_s', '')} |")
            if "lab_over_pytorch" in part:
                lines += ["", f"lab / PyTorch (WRN float32 step): **{part['lab_over_pytorch']:.2f}x**"]
        elif name == "mnist":
            config = part["config"]
            lines += [f"{config['dataset']}, {config['model']}, {config['labels_per_class']} labels per class, "
                      f"{len(config['seeds'])} seeds vmapped, {config['steps']} steps, batch {config['batch_size']}:", "",
                      "| method | accuracy (mean ± std) | wall s (compile, train) |", "| --- | ---: | ---: |"]
            for label, row in part["rows"].items():
                wall = row["wall_time_s"]
                lines.append(f"| {label} | {100 * row['accuracy_mean']:.1f} ± {100 * row['accuracy_std']:.1f} | "
                             f"{row['wall_s']} ({wall.get('compile')}, {wall.get('train')}) |")
        elif name == "tests":
            if "counts" in part:
                counts = part["counts"]
                lines.append(f"`LAB_TEST_PLATFORM={part['platform']}`: {counts['passed']} passed, {counts['failures']} "
                             f"failed, {counts['errors']} errors, {counts['skipped']} skipped in {part['wall_s']} s.")
                if part["missing_modules"]:
                    lines.append(f"Modules missing on this machine: {', '.join(part['missing_modules'])}.")
                lines += [f"- {line}" for line in part["failed"]]
        elif name == "fashion":
            budgets = list(next(iter(part["means"].values())))
            lines += ["| method | " + " | ".join(f"{k} / class" for k in budgets) + " |",
                      "|" + " --- |" * (len(budgets) + 1)]
            for label, by_k in part["means"].items():
                lines.append(f"| {label} | " + " | ".join(f"{100 * by_k[k]:.1f}" for k in budgets) + " |")
        for key, note in part.get("notes", {}).items():
            lines.append(f"- {key}: {note}")
        lines.append("")
    return "\n".join(lines)


def save(report: dict, out: Path) -> None:
    from lab import files

    files.write_atomic(out / "device_check.json", json.dumps(report, indent=2, default=str))
    files.write_atomic(out / "device_check.md", markdown(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="toy sizes, to check this script end to end on a CPU")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "device_check"))
    parser.add_argument("--data", default=None, help="folder with mnist/ (and fashion-mnist/) IDX files")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LAB_CACHE", tempfile.mkdtemp(prefix="lab-cache-"))  # hermetic: nothing reused
    data_root = None if args.data is None else Path(args.data).resolve()
    start = time.perf_counter()

    report = {"command": "python benchmarks/device_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "smoke": args.smoke, "environment": environment(), "parts": {}, "wall_s": 0.0}
    # Seconds each part is expected to take on one GPU; a part starts only if that fits the budget.
    expected_s = {"steps": 120, "torch": 40, "mnist": 90, "tests": 60, "fashion": 150}
    for name in args.parts:
        left = sizes["budget_s"] - (time.perf_counter() - start)
        print(f"[device_check] {name} ({left:.0f} s of the budget left)", flush=True)
        if left < expected_s[name] * (0.05 if args.smoke else 1):
            report["parts"][name] = {"skipped": f"{left:.0f} s of the {sizes['budget_s']} s budget left, "
                                                f"about {expected_s[name]} s needed"}
        else:
            tic = time.perf_counter()
            try:
                if name == "steps":
                    part = part_steps(sizes, report)
                elif name == "torch":
                    part = part_torch(sizes, report)
                elif name == "mnist":
                    part = part_mnist(sizes, report, data_root)
                elif name == "tests":
                    part = part_tests(sizes, report, out, min(sizes["tests_timeout_s"], left - 10))
                else:
                    part = part_fashion(sizes, report, data_root)
                part["part_wall_s"] = round(time.perf_counter() - tic, 1)
            except Skip as why:
                part = {"skipped": str(why)}
            except Exception as error:  # one part failing must not lose the others' numbers
                part = {"error": f"{type(error).__name__}: {str(error)[:1000]}"}
            report["parts"][name] = part
        report["wall_s"] = round(time.perf_counter() - start, 1)
        save(report, out)
        print(json.dumps({name: report["parts"][name]}, default=str)[:2000], flush=True)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
