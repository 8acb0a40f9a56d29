"""Run finetune-suite ONNX bundles with onnxruntime, numpy, Pillow, soundfile and soxr only (no torch).

    from suite_runtime import Bundle
    bundle = Bundle.load("runs/x/export")
    bundle.predict(["cat.jpg"], top_k=3)            # classification: Prediction per input
    bundle.predict(["street.jpg"], conf=0.25)       # detection: Detections per input (boxes, scores, classes)
    bundle.predict(["yes.wav", "clip.flac"])        # speech: Prediction with label/score, or .text for CTC
    cascade = Bundle.load("runs/c/export")          # task "cascade": a Cascade (detector -> classifier)
    cascade.predict(["shelf.jpg"])                  # CascadeDetections per input (fine labels, combined scores)
"""
from suite_runtime.audio import (AudioSpec, ctc_greedy, log_mel, mel_filters, normalize, pad_batch, preprocess_audio,
                                 read_audio)
from suite_runtime.bundle import Bundle, Prediction, softmax
from suite_runtime.cascade import Cascade, CascadeDetections, crop_box
from suite_runtime.detection import (Detections, batched_nms, decode_yolo, draw, letterbox, nms, scale_boxes,
                                     xywh2xyxy)
from suite_runtime.preprocess import preprocess_image

__version__ = "0.1.0"
__all__ = ["AudioSpec", "Bundle", "Cascade", "CascadeDetections", "Detections", "Prediction", "batched_nms",
           "crop_box", "ctc_greedy", "decode_yolo", "draw", "letterbox", "log_mel", "mel_filters", "nms", "normalize",
           "pad_batch", "preprocess_audio", "preprocess_image", "read_audio", "scale_boxes", "softmax", "xywh2xyxy",
           "__version__"]
