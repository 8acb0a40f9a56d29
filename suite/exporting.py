"""`suite export DIR`: the run's best weights as a verified ONNX bundle in DIR/export/."""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from suite import rundir
from suite.core import export as ex
from suite.errors import UserError
from suite.recipe import Recipe
from suite.tasks import Modality


class VerificationFailed(UserError):
    """The bundle does not match PyTorch: exit non-zero, the reasons are in verify.json."""


def export_run(run_dir: str | Path, quantize: Sequence[str] | None = None, opset: int | None = None) -> dict:
    """Export, quantize, verify; returns verify.json's document (raises VerificationFailed when it fails)."""
    run = rundir.open_run(run_dir)
    cfg = run.recipe.export
    cfg = dataclasses.replace(cfg, quantize=tuple(quantize) if quantize is not None else cfg.quantize,
                              opset=opset or cfg.opset)
    return export_model(run.recipe, run.modality, run.data, run.model(), run.dir / rundir.EXPORT, cfg)


def export_model(recipe: Recipe, mod: Modality, data, model, out: Path, cfg) -> dict:
    from suite_runtime import Bundle

    out.mkdir(parents=True, exist_ok=True)
    spec = mod.export_spec(recipe, data, model)
    model = spec.module if spec.module is not None else model  # what is exported is what is compared
    tqdm.write(f"[{recipe.name}] exporting to {out}/model.onnx (opset {cfg.opset})")
    exporter = ex.export_onnx(model, spec.example, out / ex.VARIANT_FILES["fp32"], cfg.opset, spec.io)
    variants = {"fp32": {"file": ex.VARIANT_FILES["fp32"]}}
    kinds = [k for k in cfg.quantize if spec.quantizable is None or k in spec.quantizable]
    for kind in sorted(set(cfg.quantize) - set(kinds)):
        tqdm.write(f"[{recipe.name}] skipping {kind}: not supported for this model's graph "
                   f"(supported: {', '.join(spec.quantizable) or 'none'})")
    for kind in kinds:
        tqdm.write(f"[{recipe.name}] quantizing: {kind}")
        calib = spec.calibration(cfg.calibration_samples) if kind == "int8-static" else ()
        choice = ex.quantize(out / ex.VARIANT_FILES["fp32"], kind, out / ex.VARIANT_FILES[kind], calib,
                             spec.quant_exclude, spec.io.input)
        variants[kind] = {"file": ex.VARIANT_FILES[kind], "quantization": choice}
    for v in variants.values():
        v["size_bytes"] = (out / v["file"]).stat().st_size
    ex.write_json(out / "model.json", ex.model_json(spec, exporter, cfg.opset, variants))

    reference = spec.evaluate(model)
    report = {"metric": spec.metric, "variants": {}}
    for name in variants:
        bundle = Bundle.load(out, variant=name)
        fp32 = name == "fp32"
        if spec.tensor_check is not None:  # outputs of data-dependent length (detections after NMS)
            tensors = spec.tensor_check(model, bundle, spec.example, cfg.verify.atol)
        else:
            tensors = ex.tensor_parity(model, bundle, spec.example, spec.parity_batches, cfg.verify.atol,
                                       spec.relative_atol)
        if not fp32:  # int8 is judged on the task metric; its tensor error is recorded, not gated
            tensors["passed"], tensors["note"] = True, "informational for int8"
        drop = cfg.verify.max_metric_drop if fp32 else cfg.verify.int8_max_metric_drop
        task = ex.task_parity(reference, spec.evaluate(ex.OnnxModel(bundle)), spec.metric, drop)
        report["variants"][name] = {"tensor": tensors, "task": task, "passed": tensors["passed"] and task["passed"]}
        diff = max(math.inf if r["max_abs_diff"] is None else r["max_abs_diff"] for r in tensors["shapes"])
        tqdm.write(f"[{recipe.name}] verify {name}: {spec.metric} torch {task['torch']:.4f} "
                   f"onnxruntime {task['onnxruntime']:.4f}, max abs diff {diff:.2e}")
    report["passed"] = all(v["passed"] for v in report["variants"].values())
    ex.write_json(out / "verify.json", report)
    if not report["passed"]:
        raise VerificationFailed(f"export verification failed ({_reasons(report)}); see {out / 'verify.json'}")
    return report


def _reasons(report: dict) -> str:
    out = []
    for name, v in report["variants"].items():
        bad = [r for r in v["tensor"]["shapes"] if not r["passed"]]
        if bad and not v["tensor"]["passed"]:
            r = bad[0]
            out.append(f"{name}: max abs diff {r['max_abs_diff']} > atol {v['tensor']['atol']} at {r['shape']}"
                       if not r["nan"] else f"{name}: NaN at {r['shape']}")
        if not v["task"]["passed"]:
            t = v["task"]
            out.append(f"{name}: {t['metric']} dropped {t['drop_points']:.2f} points (limit {t['max_drop_points']})")
    return "; ".join(out)


def parity_table(report: dict, out: Path) -> str:
    """verify.json as markdown: one row per variant."""
    meta = json.loads((out / "model.json").read_text())
    rows = ["| variant | metric | PyTorch | onnxruntime | delta | max abs diff | size MB | int8 ops | passed |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    notes = []
    for name, v in report["variants"].items():
        t = v["task"]
        diff = max((r["max_abs_diff"] or float("nan")) for r in v["tensor"]["shapes"])
        size = meta["variants"][name]["size_bytes"] / 2**20
        covers = meta["variants"][name].get("quantization", {}).get("covers")
        ops = f"{covers['int8_ops']}/{covers['weighted_ops']}" if covers else "–"
        if covers and covers["note"]:
            notes.append(f"- {name}: {covers['note']}")
        rows.append(f"| {name} | {t['metric']} | {t['torch']:.4f} | {t['onnxruntime']:.4f} | {t['delta']:+.4f} | "
                    f"{diff:.2e} | {size:.1f} | {ops} | {'yes' if v['passed'] else 'NO'} |")
    return "\n".join(rows + ([""] + notes if notes else []))


def export_and_bench(recipe: Recipe, mod: Modality, data, model, run_dir: Path) -> tuple[list, list]:
    """The end of `suite run` when the recipe has export: the bundle (a failed verification fails the run),
    its parity table, and the benchmark, which never fails a finished run: when it cannot run for this
    model, report.md and bench.json say why."""
    out = run_dir / rundir.EXPORT
    report = export_model(recipe, mod, data, model, out, recipe.export)
    sections, plots = [("Export parity", parity_table(report, out))], []
    if recipe.bench.batch_sizes:
        from suite.benching import bench_run_dir
        from suite.core.bench import write_bench_error

        try:
            table, png = bench_run_dir(run_dir, recipe.bench.batch_sizes,
                                       compile="torch.compile" in recipe.bench.runtimes,
                                       warmup=recipe.bench.warmup, iters=recipe.bench.iters)
        except Exception as e:  # reporting only: the model, its bundle and its metrics are already written
            reason = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            tqdm.write(f"[{recipe.name}] inference benchmark not run ({reason}); the run itself succeeded")
            write_bench_error(run_dir, reason)
            sections.append(("Inference benchmark", f"Not run: {reason}."))
        else:
            sections.append(("Inference benchmark", table))
            plots.append(png)
    return sections, plots
