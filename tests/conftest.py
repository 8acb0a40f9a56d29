"""Offline, small and seeded: every test runs without network and on 2 CPU cores."""
import os
import socket
import sys
import tempfile

import pytest

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # several pytest workers share the cores: one thread each instead of each spinning up one per core; set before
    # any test imports torch, and inherited by the runs and torchrun ranks tests start as subprocesses
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("SUITE_CACHE", tempfile.mkdtemp(prefix="suite-cache-"))  # staged datasets, not ~/.cache


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """A test that would download fails loudly instead of hanging or passing by luck."""

    def guard(*args, **kwargs):
        raise OSError("network access is blocked in tests")

    connect = socket.socket.connect

    def local_only(sock, address, *args):  # AF_UNIX: DataLoader workers hand tensors over such sockets
        if sock.family == socket.AF_UNIX:
            return connect(sock, address, *args)
        return guard()

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setattr(socket, "create_connection", guard)


@pytest.fixture(autouse=True)
def _pil_open_unpatched(monkeypatch):
    """Test modules import Ultralytics directly, which patches PIL.Image.open process-wide (suite code undoes
    it in suite.detection.yolo); keep PIL's own open here so test order cannot change what a scan sees."""
    patches = sys.modules.get("ultralytics.utils.patches")
    if patches is not None:
        from PIL import Image

        monkeypatch.setattr(Image, "open", patches._image_open)


@pytest.fixture
def suite_cli(capsys):
    """Run the `suite` command in-process: (exit code, stdout, stderr)."""
    from suite.cli import main

    def call(*argv):
        try:
            main(list(argv))
            code = 0
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return call

