"""Run finetune-suite ONNX bundles with onnxruntime, numpy and Pillow only (no torch).

    from suite_runtime import Bundle
    bundle = Bundle.load("runs/x/export")
    bundle.predict(["cat.jpg"], top_k=3)
"""
from suite_runtime.bundle import Bundle, Prediction, softmax
from suite_runtime.preprocess import preprocess_image

__version__ = "0.1.0"
__all__ = ["Bundle", "Prediction", "preprocess_image", "softmax", "__version__"]
