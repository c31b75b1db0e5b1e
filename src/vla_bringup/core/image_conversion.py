"""`sensor_msgs/Image` fields <-> numpy, without cv_bridge.

The embedded set-up has no OpenCV, so perception converts messages itself. Functions take the plain
message fields (no rclpy) and reject malformed frames with an `ImageFormatError` whose
`reason_code` is stable, so the node can count drops per cause instead of parsing messages.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any

import numpy as np

MAX_SIDE = 8192  # px; far above any camera we run, yet one frame cannot exhaust memory

# encoding -> (element type, channels). The byte order is not here: it comes from the message.
_FORMATS: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4),
    "mono8": ("u1", 1), "mono16": ("u2", 1),
    "8UC1": ("u1", 1), "8UC3": ("u1", 3), "8UC4": ("u1", 4),
    "16UC1": ("u2", 1), "16UC3": ("u2", 3), "16SC1": ("i2", 1),
    "32FC1": ("f4", 1), "32FC3": ("f4", 3), "64FC1": ("f8", 1),
}
# Packed 4:2:2 YUV: 4 bytes hold 2 pixels. Value = byte offsets of (Y0, U, Y1, V) in each group.
# ROS names "yuv422" UYVY and "yuv422_yuy2" YUYV; newer ROS also spells them "uyvy" / "yuyv".
_YUV_LAYOUTS: dict[str, tuple[int, int, int, int]] = {
    "yuv422": (1, 0, 3, 2), "uyvy": (1, 0, 3, 2),
    "yuv422_yuy2": (0, 1, 2, 3), "yuyv": (0, 1, 2, 3),
}
SUPPORTED_ENCODINGS = tuple(_FORMATS) + tuple(_YUV_LAYOUTS)

# BT.601 limited range, the matrix OpenCV (hence cv_bridge) uses for these encodings, so both paths
# give the same colours. Rows R, G, B; columns (Y - 16, U - 128, V - 128).
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
_YUV_TO_RGB = np.array([
    [255 / 219, 0.0, 255 / 224 * 2 * (1 - _KR)],
    [255 / 219, -255 / 224 * 2 * (1 - _KB) * _KB / _KG, -255 / 224 * 2 * (1 - _KR) * _KR / _KG],
    [255 / 219, 255 / 224 * 2 * (1 - _KB), 0.0],
])
_RGB_TO_YUV = np.linalg.inv(_YUV_TO_RGB)


class ImageFormatError(ValueError):
    """A frame that cannot be converted; `reason_code` is a short stable string for counters."""

    def __init__(self, reason_code: str, message: str) -> None:
        super().__init__(f"{reason_code}: {message}")
        self.reason_code = reason_code
        self.message = message


def _bytes_per_pixel(encoding: str) -> int:
    if encoding in _YUV_LAYOUTS:
        return 2
    kind, channels = _FORMATS[encoding]
    return np.dtype(kind).itemsize * channels


def _require_known(encoding: str) -> None:
    if encoding not in _FORMATS and encoding not in _YUV_LAYOUTS:
        raise ImageFormatError(
            "unknown_encoding",
            f"encoding {encoding!r} is not supported (supported: {', '.join(SUPPORTED_ENCODINGS)})")


def _check_geometry(height: int, width: int, encoding: str) -> None:
    _require_known(encoding)
    if height < 0 or width < 0:
        raise ImageFormatError("negative_size", f"image size {width}x{height} is negative")
    if height == 0 or width == 0:
        raise ImageFormatError("zero_size", f"image size {width}x{height} has no pixels")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise ImageFormatError(
            "too_large", f"image size {width}x{height} exceeds {MAX_SIDE} px per side")
    if encoding in _YUV_LAYOUTS and width % 2:
        raise ImageFormatError(
            "odd_width_yuv", f"{encoding} packs pixel pairs, width {width} is odd")


def image_to_array(height: int, width: int, encoding: str, is_bigendian: int | bool,
                   step: int, data: Any) -> np.ndarray:
    """Decode message fields into a fresh array in native byte order.

    Single-channel encodings give (H, W), others (H, W, C); YUV 4:2:2 is decoded to (H, W, 3) RGB
    uint8. `data` is any bytes-like object (bytes, bytearray, memoryview, array.array) or a sequence
    of ints; the result never aliases it, so the message buffer may be reused.
    """
    height, width, step = int(height), int(width), int(step)
    _check_geometry(height, width, encoding)
    row_bytes = width * _bytes_per_pixel(encoding)
    if step < row_bytes:
        raise ImageFormatError(
            "step_too_small", f"step {step} B is below width * pixel size = {row_bytes} B")
    try:
        buffer = np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):  # a list of ints, or a non-contiguous view
        try:
            buffer = np.frombuffer(bytes(data), dtype=np.uint8)
        except (TypeError, ValueError) as error:
            raise ImageFormatError("bad_data", f"data is not a byte buffer: {error}") from None
    if buffer.size < step * height:
        raise ImageFormatError(
            "data_too_short", f"data holds {buffer.size} B, step * height needs {step * height} B")

    if encoding in _YUV_LAYOUTS:
        rows = np.ndarray((height, row_bytes), np.uint8, buffer, 0, (step, 1))
        return _yuv422_to_rgb(rows.reshape(height, width // 2, 4), _YUV_LAYOUTS[encoding])

    kind, channels = _FORMATS[encoding]
    dtype = np.dtype(kind).newbyteorder(">" if is_bigendian else "<")
    # A strided view over the padded rows; the final astype both copies and fixes the byte order.
    view = np.ndarray((height, width, channels), dtype, buffer, 0,
                      (step, dtype.itemsize * channels, dtype.itemsize))
    array = view.astype(dtype.newbyteorder("="), copy=True)
    return array[:, :, 0] if channels == 1 else array


# Per-byte contributions in 16.16 fixed point: decoding becomes table look-ups and integer adds,
# under 10 ms per VGA frame instead of ~25 ms for a float matrix product per pixel.
_CODES = np.arange(256, dtype=np.float64)
_LUMA_LUT = np.rint((_CODES - 16.0) * _YUV_TO_RGB[0, 0] * 65536 + 32768).astype(np.int32)
_U_LUT = np.rint(np.outer(_CODES - 128.0, _YUV_TO_RGB[:, 1]) * 65536).astype(np.int32)
_V_LUT = np.rint(np.outer(_CODES - 128.0, _YUV_TO_RGB[:, 2]) * 65536).astype(np.int32)


def _yuv422_to_rgb(groups: np.ndarray, layout: tuple[int, int, int, int]) -> np.ndarray:
    height, pairs = groups.shape[:2]
    y0_at, u_at, y1_at, v_at = layout
    luma = _LUMA_LUT[groups[..., [y0_at, y1_at]]]  # (H, pairs, 2)
    chroma = _U_LUT[groups[..., u_at]] + _V_LUT[groups[..., v_at]]  # (H, pairs, 3): R, G, B
    rgb = (luma[..., None] + chroma[:, :, None, :]) >> 16  # each pair shares its U and V
    return np.clip(rgb, 0, 255).astype(np.uint8).reshape(height, pairs * 2, 3)


def _rgb_to_yuv422(rgb: np.ndarray, layout: tuple[int, int, int, int]) -> np.ndarray:
    yuv = rgb.astype(np.float64) @ _RGB_TO_YUV.T
    height, width = rgb.shape[:2]
    luma = np.clip(np.rint(yuv[..., 0] + 16.0), 0, 255)
    # 4:2:2 keeps one chroma sample per pixel pair: the mean of the pair.
    chroma = yuv[..., 1:].reshape(height, width // 2, 2, 2).mean(axis=2)
    chroma = np.clip(np.rint(chroma + 128.0), 0, 255)
    groups = np.empty((height, width // 2, 4), np.uint8)
    y0_at, u_at, y1_at, v_at = layout
    groups[..., y0_at] = luma[:, 0::2]
    groups[..., y1_at] = luma[:, 1::2]
    groups[..., u_at] = chroma[..., 0]
    groups[..., v_at] = chroma[..., 1]
    return groups


def _cast_checked(array: np.ndarray, kind: str, encoding: str) -> np.ndarray:
    """Cast to the encoding's element type only when no value changes, never wrap silently."""
    target = np.dtype(kind)
    if array.dtype == target:
        return array
    if array.dtype.kind == "f" and target.kind == "f":
        return array.astype(target)
    if array.dtype.kind in "iub" and target.kind in "iu":
        info = np.iinfo(target)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return array.astype(target)
    raise ImageFormatError(
        "dtype_mismatch", f"{encoding} needs {target.name} values, got an array of {array.dtype}")


def array_to_image_fields(array: np.ndarray, encoding: str) -> dict[str, Any]:
    """Encode an array into `sensor_msgs/Image` fields (little-endian, unpadded rows).

    For YUV encodings `array` is (H, W, 3) RGB uint8 with an even width.
    """
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ImageFormatError("bad_shape", f"expected (H, W) or (H, W, C), got {array.shape}")
    height, width = int(array.shape[0]), int(array.shape[1])
    _check_geometry(height, width, encoding)
    channels = 3 if encoding in _YUV_LAYOUTS else _FORMATS[encoding][1]
    got = 1 if array.ndim == 2 else array.shape[2]
    if got != channels:
        raise ImageFormatError(
            "bad_shape", f"{encoding} needs {channels} channel(s), array shape is {array.shape}")
    if encoding in _YUV_LAYOUTS:
        packed = _rgb_to_yuv422(_cast_checked(array, "u1", encoding), _YUV_LAYOUTS[encoding])
    else:
        kind = _FORMATS[encoding][0]
        packed = _cast_checked(array, kind, encoding).astype(np.dtype(kind).newbyteorder("<"))
    data = np.ascontiguousarray(packed).tobytes()
    return {"height": height, "width": width, "encoding": encoding, "is_bigendian": 0,
            "step": len(data) // height, "data": data}


def _normalise_to_uint8(array: np.ndarray) -> np.ndarray:
    """Stretch finite values to 0..255 (per frame, all channels together, so hue survives)."""
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    low, high = values[finite].min(), values[finite].max()
    # Float images already within 0..1 are intensities (cv_bridge's convention); keep their scale.
    if array.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    return np.clip(np.rint(np.where(finite, scaled, 0.0)), 0, 255).astype(np.uint8)


def to_rgb8(array: np.ndarray, encoding: str) -> np.ndarray:
    """Turn a decoded array into (H, W, 3) uint8 RGB for display and policies.

    BGR(A) is swapped and alpha dropped; the generic 3/4-channel encodings (8UC3, 8UC4, 16UC3,
    32FC3) are taken as BGR(A), OpenCV's order, since such frames come from OpenCV code. mono16 is
    scaled by its full range (an intensity camera); 16UC*/16SC1 (usually depth in mm) and floats are
    stretched per frame, except floats within 0..1. YUV encodings are already RGB after
    `image_to_array`. For rgb8 the input is returned as is (no copy per frame).
    """
    array = np.asarray(array)
    _require_known(encoding)
    channels = 3 if encoding in _YUV_LAYOUTS else _FORMATS[encoding][1]
    if array.ndim == 2 and channels == 1:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] != channels:
        raise ImageFormatError(
            "bad_shape", f"{encoding} needs {channels} channel(s), array shape is {array.shape}")
    if encoding == "mono16":
        array = (array.astype(np.uint16) >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = _normalise_to_uint8(array)
    if channels == 1:
        return np.repeat(array, 3, axis=2)
    if encoding in ("bgr8", "bgra8", "8UC3", "8UC4", "16UC3", "32FC3"):
        array = array[:, :, 2::-1]
    return np.ascontiguousarray(array[:, :, :3])


def preprocess_for_policy(rgb: np.ndarray, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Resize (H, W, 3) uint8 RGB to `size` = (height, width) with bilinear resampling.

    The input itself is returned when it already has that size, so no copy is paid per frame.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageFormatError(
            "bad_shape", f"expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    height, width = int(size[0]), int(size[1])
    if rgb.shape[:2] == (height, width):
        return rgb
    from PIL import Image  # deferred: nodes that never resize need not load Pillow

    resized = Image.fromarray(np.ascontiguousarray(rgb), "RGB").resize(
        (width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).copy()


@functools.lru_cache(maxsize=1)
def cv_bridge_available() -> bool:
    """Whether the ROS 2 cv_bridge imports; checked lazily because it drags in OpenCV."""
    try:
        module = importlib.import_module("cv_bridge")
    except Exception:  # noqa: BLE001 - a broken OpenCV/numpy ABI raises more than ImportError
        return False
    return hasattr(getattr(module, "CvBridge", None), "imgmsg_to_cv2")
