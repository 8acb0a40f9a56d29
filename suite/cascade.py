"""`task: cascade`: a detector feeding a classifier, trained, evaluated, exported and served as one pipeline.

One detection dataset labelled with the FINE classes, and ``classes:`` mapping each detector class to the fine
classes it covers, give every stage its data:

- the detector trains on the data with every fine class replaced by its detector class (``data/detector/``);
- the classifier trains on crops of the ground-truth boxes (the box widened by ``crop.margin``, cut exactly as
  ``suite_runtime.cascade.crop_box`` cuts them at serving time), labelled with their fine class
  (``data/crops/``, an image folder);
- ``compare: [direct]`` trains the same detector recipe on the fine classes directly, with the same budget.

Each stage is a normal `suite run` in the cascade's run directory (``detector/``, ``classifier/``,
``direct/``); a stage given as a finished run directory is used as it is. The cascade is scored on the
validation split through ``suite_runtime.cascade.Cascade`` twice, with the PyTorch models and with the exported
graphs, and ``export/`` holds both bundles and a model.json describing the pipeline.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from suite import rundir
from suite.core.checkpoint import atomic_write_text
from suite.errors import UserError
from suite.recipe import CascadeRecipe, dump_recipe, load_cascade

PARITY_TOLERANCE = 0.01  # mAP50-95 points between PyTorch and onnxruntime through the same runtime code


def log(message: str) -> None:
    tqdm.write(message)


def _is_run(path: str) -> bool:
    return (Path(path) / rundir.BEST).is_file()


def _stage_recipe(source: str):
    """The detection or classification recipe of a stage: its file, or a finished run's recipe.yaml."""
    from suite.tasks import load_recipe

    return rundir.open_run(source).recipe if _is_run(source) else load_recipe(source)


def _fine_data(rc: CascadeRecipe):
    """The fine-labelled detection data (generated first for synthetic:shapes), through the detection modality."""
    from suite.tasks import modality_for

    det = _stage_recipe(rc.detector)
    if det.task != "detection":
        raise UserError(f"cascade detector: {rc.detector} is a {det.task} recipe; give a detection recipe or run")
    recipe = dataclasses.replace(det, name=rc.name, data=rc.data)
    return modality_for("detection").load_data(recipe)


def _check_classes(rc: CascadeRecipe, labels: Sequence[str]) -> dict[int, int]:
    """fine class id -> detector class id; every data class is routed, every routed class exists."""
    fine = {f: i for i, group in enumerate(rc.classes.values()) for f in group}
    missing = [f for f in fine if f not in labels]
    if missing:
        raise UserError(f"cascade classes: {', '.join(missing)} not in the data's classes ({', '.join(labels)}); "
                        "name the data's own class names")
    unrouted = [c for c in labels if c not in fine]
    if unrouted:
        raise UserError(f"cascade classes: the data's class(es) {', '.join(unrouted)} belong to no detector class; "
                        "add them under one in `classes:`")
    return {i: fine[name] for i, name in enumerate(labels)}


def _coarse(data, to_coarse: dict[int, int], names: list[str]):
    lut = np.array([to_coarse[i] for i in range(len(data.labels))], np.int64)

    def view(samples):
        return [dataclasses.replace(s, labels=lut[s.labels]) for s in samples] if samples else samples

    return dataclasses.replace(data, labels=names, train=view(data.train), val=view(data.val), test=view(data.test))


def write_crops(data, out: Path, margin: float) -> dict[str, int]:
    """Ground-truth boxes cut with ``crop_box`` into ``out/{train,val}/{fine class}/{image}_{k}.png``; returns
    the crop count per split. Boxes under 2 px either way are left out."""
    from suite.detection.data import _unique_names
    from suite_runtime.cascade import crop_box
    from suite_runtime.preprocess import as_pil, to_rgb

    if out.exists():
        shutil.rmtree(out)
    counts = {}
    for split in ("train", "val"):
        n = 0
        samples = getattr(data, split) or []
        names = _unique_names(samples, [s.image for s in samples])  # two folders may both hold 0001.jpg
        for sample, name in zip(samples, names):
            image = to_rgb(as_pil(str(sample.image)))  # upright (EXIF) and on white, as the runtime loads it
            for k, (box, label) in enumerate(zip(sample.boxes, sample.labels)):
                if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                    continue
                folder = out / split / data.labels[int(label)]
                folder.mkdir(parents=True, exist_ok=True)
                crop_box(image, box, margin).save(folder / f"{Path(name).stem}_{k}.png")
                n += 1
        counts[split] = n
    return counts


def _check_crops(crops: Path, labels: Sequence[str]) -> None:
    """Every fine class has training and validation crops, or a one-line error before any stage trains."""
    for split in ("train", "val"):
        empty = [c for c in labels if not any((crops / split / c).glob("*.png"))]
        if empty:
            raise UserError(f"cascade: no {split} crops of class(es) {', '.join(empty)} (no boxes of 2 px or more in "
                            f"the {split} split): add {split} boxes of them, or remove them from the data and `classes:`")


def _check_stages(rc: CascadeRecipe) -> None:
    for source, what, task in ((rc.detector, "detector", "detection"),
                               (rc.classifier, "classifier", "image-classification")):
        found = _stage_recipe(source).task
        if found != task:
            raise UserError(f"cascade {what}: {source} is a {found} recipe or run; give a {task} recipe or run")


def _train_stage(source: str, overrides: list[str], out: Path, device: str, what: str):
    """A `suite run` of a stage recipe into ``out``, or the finished run ``source`` as it is."""
    from suite.runner import run

    if _is_run(source):
        log(f"[cascade] {what}: the finished run {source}")
        return Path(source)
    log(f"[cascade] {what}: training {source} -> {out}")
    run(source, overrides, out=out, device=device, overwrite=True)
    return out


def _torch_bundle(run_dir: Path, meta: dict):
    """A finished stage run's best model behind the runtime's session interface, with ``meta`` (a model.json)."""
    from suite.core.export import as_bundle

    module = rundir.open_run(run_dir).export_module()
    return as_bundle(module, meta, meta["input"]["shape"], [o["name"] for o in meta["outputs"]], meta["input"]["name"])


def _runtime_parts(run_dir: Path):
    """(bundle dir, its model.json, a torch Bundle through the same runtime code) of a finished stage run."""
    bundle = rundir.bundle_dir(run_dir)
    meta = json.loads((bundle / "model.json").read_text())
    return bundle, meta, _torch_bundle(run_dir, meta)


def _scores(dets, samples, labels: list[str]) -> dict[str, float]:
    from suite.core.metrics import DetectionEvaluator

    ev = DetectionEvaluator(labels)
    ev.update([{"boxes": d.boxes, "scores": d.scores, "labels": d.classes} for d in dets],
              [{"boxes": s.boxes, "labels": s.labels} for s in samples])
    r = ev.compute().metrics
    return {"val/map50": r["map50"], "val/map50_95": r["map50_95"]}


def scored_map(predict, samples, labels: list[str], **kw) -> dict[str, float]:
    """mAP of ``predict``'s boxes (a Cascade's labelled boxes, or a detection bundle's at the cascade's
    thresholds, one label per box as the cascade sees them) on ``samples``, 8 images per call."""
    dets = []
    for start in range(0, len(samples), 8):
        dets += predict([str(s.image) for s in samples[start:start + 8]], **kw)
    return _scores(dets, samples, labels)


def _copy_bundle(src: Path, dst: Path) -> None:
    """The fp32 graph and model.json of a stage bundle (int8 variants stay in the stage's own export/)."""
    dst.mkdir(parents=True)
    meta = json.loads((src / "model.json").read_text())
    fp32 = meta.get("variants", {}).get("fp32", {"file": "model.onnx"})
    meta["variants"] = {"fp32": fp32}
    meta.pop("default_variant", None)
    shutil.copy2(src / fp32["file"], dst / fp32["file"])
    with open(dst / fp32["file"], "rb") as f:
        os.fsync(f.fileno())
    atomic_write_text(dst / "model.json", json.dumps(meta, indent=2) + "\n")


def write_bundle(out: Path, rc: CascadeRecipe, labels: list[str], det_dir: Path, cls_dir: Path) -> dict:
    """export/: detector/ and classifier/ bundles and the pipeline's model.json, written to a temporary folder
    and renamed into place."""
    meta = {"format_version": 1, "task": "cascade", "labels": list(labels), "detector": "detector",
            "classifier": "classifier", "route": {k: list(v) for k, v in rc.classes.items()},
            "crop": {"margin": rc.crop.margin}, "thresholds": {"conf": rc.conf, "iou": rc.iou}, "score": "product"}
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    _copy_bundle(det_dir, tmp / "detector")
    _copy_bundle(cls_dir, tmp / "classifier")
    atomic_write_text(tmp / "model.json", json.dumps(meta, indent=2) + "\n")
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)  # the previous bundle stays whole until the new one is in place
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)
    return meta


def bench(cascade, paths: list[str], warmup: int, iters: int) -> dict:
    """Latency per image of the whole pipeline and of each stage (onnxruntime), over ``iters`` validation
    images (cycled), after ``warmup`` images."""
    for i in range(warmup):
        cascade.predict([paths[i % len(paths)]])
    timings: dict = {}
    totals = []
    for i in range(iters):
        start = time.perf_counter()
        cascade.predict([paths[i % len(paths)]], timings=timings)
        totals.append(time.perf_counter() - start)
    n = max(1, timings.get("images", iters))
    return {"images": iters, "crops": timings.get("crops", 0),
            "detector_ms_per_image": 1e3 * timings.get("detector", 0.0) / n,
            "classifier_ms_per_image": 1e3 * timings.get("classifier", 0.0) / n,
            "classifier_ms_per_crop": 1e3 * timings.get("classifier", 0.0) / max(1, timings.get("crops", 0)),
            "total_ms_p50": 1e3 * float(np.median(totals)), "total_ms_mean": 1e3 * float(np.mean(totals))}


def _table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| run | val mAP50 | val mAP50-95 |", "|---|---:|---:|"]
    lines += [f"| {name} | {m['val/map50']:.4f} | {m['val/map50_95']:.4f} |" for name, m in rows]
    return "\n".join(lines)


def run_cascade(recipe_path: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None,
                device: str = "auto", overwrite: bool = False):
    """Train (or take) the detector and the classifier, evaluate the cascade against the direct detector,
    export the pipeline, verify it and time it; write the run directory."""
    from suite.core.export import write_json
    from suite.runner import RunResult, fresh_run_dir, next_free
    from suite_runtime import Bundle
    from suite_runtime.cascade import Cascade

    start = time.perf_counter()
    rc = load_cascade(recipe_path, overrides)
    run_dir = fresh_run_dir(Path(out), overwrite) if out else next_free(Path("runs") / rc.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / rundir.RECIPE, dump_recipe(rc))
    _check_stages(rc)
    data = _fine_data(rc)
    log(f"[{rc.name}] data: {data.report.summary()}")
    coarse_names = list(rc.classes)
    to_coarse = _check_classes(rc, data.labels)
    coarse = _coarse(data, to_coarse, coarse_names)

    from suite.detection.data import write_yolo

    views = run_dir / "data"
    det_yaml = write_yolo(coarse, views / "detector")
    crops = write_crops(data, views / "crops", rc.crop.margin)
    log(f"[{rc.name}] crops of the ground-truth boxes: {crops['train']} train, {crops['val']} val -> {views / 'crops'}")
    _check_crops(views / "crops", data.labels)
    det_run = _train_stage(rc.detector, ["data.format=yolo", f"data.root={det_yaml}", "eval.compare=[]",
                                         "export.onnx=true", "bench.batch_sizes=[]"],
                           run_dir / "detector", device, "detector")
    cls_run = _train_stage(rc.classifier, ["data.format=imagefolder", f"data.root={views / 'crops'}",
                                           "eval.compare=[]", "export.onnx=true", "bench.batch_sizes=[]"],
                           run_dir / "classifier", device, "classifier")
    det_labels = json.loads((rundir.bundle_dir(det_run) / "model.json").read_text())["labels"]
    if list(det_labels) != coarse_names:
        raise UserError(f"cascade detector {det_run}: its classes are {det_labels}, the cascade's detector classes "
                        f"{coarse_names}; train it on the cascade's detector view or list them in that order")

    det_bundle_dir, det_meta, det_torch = _runtime_parts(det_run)
    cls_bundle_dir, cls_meta, cls_torch = _runtime_parts(cls_run)
    meta = write_bundle(run_dir / rundir.EXPORT, rc, data.labels, det_bundle_dir, cls_bundle_dir)
    samples = data.val
    try:
        onnx = Bundle.load(run_dir / rundir.EXPORT)
        torch_cascade = Cascade(det_torch, cls_torch, meta, run_dir / rundir.EXPORT)
    except ValueError as e:  # e.g. a finished classifier run without every routed fine class
        raise UserError(f"cascade bundle: {e}") from None
    deployed = scored_map(onnx.predict, samples, data.labels)
    through_torch = scored_map(torch_cascade.predict, samples, data.labels)
    thresholds = {"conf": rc.conf, "iou": rc.iou}
    stages = {"detector": {"val": scored_map(onnx.detector.predict, coarse.val, coarse_names, **thresholds)},
              "classifier": {"val": json.loads((cls_run / "metrics.json").read_text())["val"]}}
    baselines = {}
    if "direct" in rc.compare:
        direct_yaml = write_yolo(data, views / "direct")
        # the detector's recipe, also when `detector:` is a finished run (its recipe.yaml): never that run itself
        recipe = str(Path(rc.detector) / rundir.RECIPE) if _is_run(rc.detector) else rc.detector
        direct_run = _train_stage(recipe, ["data.format=yolo", f"data.root={direct_yaml}", "eval.compare=[]",
                                           "export.onnx=false", "bench.batch_sizes=[]"],
                                  run_dir / "direct", device, "direct (the detector on the fine classes)")
        direct = _torch_bundle(direct_run, dict(det_meta, labels=list(data.labels)))
        own = json.loads((direct_run / "metrics.json").read_text())["val"]
        baselines["direct"] = {"val": scored_map(direct.predict, samples, data.labels, **thresholds),
                               "own_protocol": {k: v for k, v in own.items() if "map" in k}}
    diff = abs(deployed["val/map50_95"] - through_torch["val/map50_95"])
    parity = {"pytorch": through_torch, "onnxruntime": deployed, "map50_95_diff": diff,
              "tolerance": PARITY_TOLERANCE, "passed": diff <= PARITY_TOLERANCE}
    doc = {"task": "cascade", "val": deployed, "test": {}, "per_class": {}, "baselines": baselines,
           "stages": stages, "crops": crops, "parity": parity, "seconds": round(time.perf_counter() - start, 1)}
    write_json(run_dir / "metrics.json", doc)
    timing = None
    if rc.bench.batch_sizes:
        timing = bench(onnx, [str(s.image) for s in samples], rc.bench.warmup, max(rc.bench.iters, 1))
        write_json(run_dir / "bench.json", {"task": "cascade", **timing})
    rows = [("cascade (onnxruntime)", deployed), ("cascade (PyTorch)", through_torch),
            ("detector alone, detector classes", stages["detector"]["val"])]
    if "direct" in baselines:
        rows.append(("direct: the detector trained on the fine classes", baselines["direct"]["val"]))
    table = _table(rows)
    _report(run_dir, rc, doc, timing, table)
    if not parity["passed"]:
        raise UserError(f"cascade export parity failed: mAP50-95 differs by {diff:.4f} between PyTorch and "
                        f"onnxruntime (tolerance {PARITY_TOLERANCE}); see {run_dir / 'report.md'}")
    return RunResult(run_dir, doc, table)


def _report(run_dir: Path, rc: CascadeRecipe, doc: dict, timing: dict | None, table: str) -> None:
    acc = doc["stages"]["classifier"]["val"].get("val/accuracy")
    lines = [f"# {rc.name}: cascade", "",
             f"Detector classes {', '.join(rc.classes)} -> fine classes "
             f"{', '.join(f for g in rc.classes.values() for f in g)}; crops widened by {rc.crop.margin:g} of the box; "
             f"detector conf {rc.conf:g}, NMS IoU {rc.iou:g}; final score = detector score x classifier probability.",
             "", "## Validation", "", table, "",
             f"Classifier on the ground-truth crops: val accuracy {acc:.4f} ({doc['crops']['val']} crops)."
             if acc is not None else "", ""]
    if "direct" in doc["baselines"]:
        own = doc["baselines"]["direct"]["own_protocol"]
        lines += [f"The direct detector under its own run's protocol (conf 0.001, every class per box): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in own.items()), ""]
    p = doc["parity"]
    lines += ["## Export parity", "",
              f"mAP50-95 through PyTorch and through onnxruntime, the same runtime code: difference "
              f"{p['map50_95_diff']:.4f} (tolerance {p['tolerance']}): {'passed' if p['passed'] else 'FAILED'}.", ""]
    if timing:
        b = timing
        lines += ["## Latency (onnxruntime, one image at a time)", "",
                  "| stage | ms per image |", "|---|---:|",
                  f"| detector | {b['detector_ms_per_image']:.2f} |",
                  f"| classifier ({b['crops'] / max(1, b['images']):.1f} crops per image, "
                  f"{b['classifier_ms_per_crop']:.2f} ms per crop) | {b['classifier_ms_per_image']:.2f} |",
                  f"| whole pipeline (p50; mean {b['total_ms_mean']:.2f}) | {b['total_ms_p50']:.2f} |", ""]
    lines += [f"Stages: `detector/`, `classifier/`" + (", `direct/`" if "direct" in rc.compare else "") +
              " (each a `suite run` directory); the bundle: `export/`.", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(lines))


def make_shapes_cascade(out, classes: Sequence[str], train_images: int, val_images: int, size: int = 128,
                        max_objects: int = 3, margin: float = 0.15, seed: int = 3) -> dict[str, Path]:
    """`suite data make shapes-cascade`: the fine-labelled scenes (``scenes/``, YOLO), the detector's view with
    the one class ``shape`` (``detector/``) and the ground-truth crops by fine class (``crops/``)."""
    from suite.datasets.shapes_det import make_shapes_detection
    from suite.detection.data import load_detection, write_yolo

    out = Path(out)
    scenes = make_shapes_detection(out / "scenes", classes, train_images, val_images, size=size,
                                   max_objects=max_objects, seed=seed, progress=True)
    data = load_detection("yolo", scenes)
    coarse = _coarse(data, {i: 0 for i in range(len(data.labels))}, ["shape"])
    detector = write_yolo(coarse, out / "detector")
    counts = write_crops(data, out / "crops", margin)
    return {"scenes": scenes, "detector": detector,
            "crops": Path(f"{out / 'crops'} ({counts['train']} train, {counts['val']} val)")}


def bench_cascade(folder: Path, threads: int | None = None, warmup: int = 3, iters: int = 30) -> tuple[str, Path]:
    """`suite bench` on a cascade: per-stage and whole-pipeline latency of the bundle (onnxruntime) on the
    validation images of its run (``data/detector/images/val``); bench.json in the run directory."""
    from suite.core.export import write_json
    from suite_runtime import Bundle

    run_dir = folder.parent
    images = sorted((run_dir / "data" / "detector" / "images" / "val").glob("*"))
    if not images:
        raise UserError(f"{folder} is a cascade bundle without its run's validation images "
                        f"({run_dir / 'data' / 'detector' / 'images' / 'val'}); bench a cascade run directory")
    cascade = Bundle.load(folder, threads=threads)
    b = bench(cascade, [str(p) for p in images], warmup, iters)
    path = write_json(run_dir / "bench.json", {"task": "cascade", "threads": threads, **b})
    table = "\n".join(["| stage | ms per image |", "|---|---:|",
                       f"| detector | {b['detector_ms_per_image']:.2f} |",
                       f"| classifier ({b['crops'] / max(1, b['images']):.1f} crops per image, "
                       f"{b['classifier_ms_per_crop']:.2f} ms per crop) | {b['classifier_ms_per_image']:.2f} |",
                       f"| whole pipeline (p50; mean {b['total_ms_mean']:.2f}) | {b['total_ms_p50']:.2f} |"])
    return table, path


def validate_cascade(path: str | Path, overrides: Sequence[str] = ()) -> str:
    """`suite validate` on a cascade recipe: its schema, its two stage recipes (or runs), the data scan and the
    class routing, without training."""
    rc = load_cascade(path, overrides)
    cls = _stage_recipe(rc.classifier)
    if cls.task != "image-classification":
        raise UserError(f"cascade classifier: {rc.classifier} is a {cls.task} recipe; give an image-classification "
                        "recipe or run")
    data = _fine_data(rc)
    _check_classes(rc, data.labels)
    return (f"cascade: {len(rc.classes)} detector class(es) -> {len(data.labels)} fine classes; data: "
            f"{data.report.summary()}")

