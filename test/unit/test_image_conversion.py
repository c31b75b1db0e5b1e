import array

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_bringup.core.image_conversion import (
    SUPPORTED_ENCODINGS, ImageFormatError, array_to_image_fields, cv_bridge_available,
    image_to_array, preprocess_for_policy, to_rgb8)

# encoding -> (dtype, channels) as the decoder returns them; YUV decodes to RGB.
LAYOUT = {
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4),
    "mono8": ("u1", 1), "mono16": ("u2", 1), "8UC1": ("u1", 1), "8UC3": ("u1", 3),
    "8UC4": ("u1", 4), "16UC1": ("u2", 1), "16UC3": ("u2", 3), "16SC1": ("i2", 1),
    "32FC1": ("f4", 1), "32FC3": ("f4", 3), "64FC1": ("f8", 1),
}
YUV = ("yuv422", "uyvy", "yuv422_yuy2", "yuyv")
RNG = np.random.default_rng(7)


def random_image(encoding, height=5, width=6):
    kind, channels = LAYOUT[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    dtype = np.dtype(kind)
    if dtype.kind == "f":
        return RNG.normal(0.0, 100.0, shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def pair_constant_rgb(height=4, width=8):
    """RGB whose pixel pairs share a colour, so 4:2:2 chroma subsampling loses nothing."""
    half = RNG.integers(30, 220, (height, width // 2, 3)).astype(np.uint8)
    return half.repeat(2, axis=1)


def test_table_covers_every_supported_encoding():
    assert set(SUPPORTED_ENCODINGS) == set(LAYOUT) | set(YUV)


@pytest.mark.parametrize("encoding", sorted(LAYOUT))
def test_round_trip(encoding):
    image = random_image(encoding)
    fields = array_to_image_fields(image, encoding)
    assert fields["encoding"] == encoding
    assert fields["step"] * fields["height"] == len(fields["data"])
    decoded = image_to_array(**fields)
    assert decoded.dtype == image.dtype and decoded.shape == image.shape
    np.testing.assert_array_equal(decoded, image)


@pytest.mark.parametrize("encoding", YUV)
def test_yuv_round_trip(encoding):
    rgb = pair_constant_rgb()
    fields = array_to_image_fields(rgb, encoding)
    assert fields["step"] == 2 * rgb.shape[1]
    decoded = image_to_array(**fields)
    assert decoded.dtype == np.uint8 and decoded.shape == rgb.shape
    assert np.abs(decoded.astype(int) - rgb).max() <= 2


@pytest.mark.parametrize("encoding, packed, rgb", [
    ("yuv422", [90, 81, 240, 81], (255, 0, 0)),  # UYVY: U Y0 V Y1
    ("yuv422_yuy2", [81, 90, 81, 240], (255, 0, 0)),  # YUYV: Y0 U Y1 V
    ("yuv422", [128, 235, 128, 235], (255, 255, 255)),
    ("yuyv", [16, 128, 16, 128], (0, 0, 0)),
    ("uyvy", [54, 145, 34, 145], (0, 255, 0)),
])
def test_yuv_known_colours(encoding, packed, rgb):
    decoded = image_to_array(1, 2, encoding, 0, 4, bytes(packed))
    assert np.abs(decoded.astype(int) - np.array([rgb, rgb])).max() <= 2


@settings(max_examples=40, deadline=None)
@given(encoding=st.sampled_from(sorted(LAYOUT)), height=st.integers(1, 6),
       width=st.integers(1, 6), pad=st.integers(1, 9))
def test_row_padding_is_skipped(encoding, height, width, pad):
    image = random_image(encoding, height, width)
    fields = array_to_image_fields(image, encoding)
    row = fields["step"]
    padded = b"".join(fields["data"][r * row:(r + 1) * row] + b"\xab" * pad for r in range(height))
    fields.update(step=row + pad, data=padded)
    np.testing.assert_array_equal(image_to_array(**fields), image)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "16UC3", "16SC1", "32FC1", "64FC1"])
def test_big_endian_gives_native_order(encoding):
    image = random_image(encoding)
    data = image.astype(image.dtype.newbyteorder(">")).tobytes()
    step = len(data) // image.shape[0]
    decoded = image_to_array(image.shape[0], image.shape[1], encoding, 1, step, data)
    assert decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, image)


def test_big_endian_known_value():
    decoded = image_to_array(1, 2, "mono16", True, 4, bytes([0x01, 0x02, 0xFF, 0x00]))
    np.testing.assert_array_equal(decoded, [[0x0102, 0xFF00]])


def test_result_does_not_alias_message_buffer():
    data = bytearray(range(12))
    decoded = image_to_array(2, 2, "rgb8", 0, 6, data)
    data[:] = bytes(12)
    np.testing.assert_array_equal(decoded.ravel(), range(12))
    assert decoded.flags.writeable and decoded.flags.owndata


@pytest.mark.parametrize("data", [array.array("B", range(12)), list(range(12)),
                                  memoryview(bytes(range(12)))])
def test_accepts_message_buffer_types(data):
    np.testing.assert_array_equal(image_to_array(2, 2, "rgb8", 0, 6, data).ravel(), range(12))


@pytest.mark.parametrize("fields, code", [
    (dict(encoding="rgb9"), "unknown_encoding"),
    (dict(encoding="jpeg"), "unknown_encoding"),
    (dict(height=0), "zero_size"),
    (dict(width=0), "zero_size"),
    (dict(height=-2), "negative_size"),
    (dict(width=8193, step=3 * 8193), "too_large"),
    (dict(height=100000), "too_large"),
    (dict(step=11), "step_too_small"),
    (dict(data=bytes(47)), "data_too_short"),
    (dict(data=b""), "data_too_short"),
    (dict(encoding="yuv422", width=3, step=6), "odd_width_yuv"),
    (dict(data="not bytes"), "bad_data"),
])
def test_malformed_frames_raise_with_reason(fields, code):
    good = dict(height=4, width=4, encoding="rgb8", is_bigendian=0, step=12, data=bytes(48))
    with pytest.raises(ImageFormatError) as error:
        image_to_array(**{**good, **fields})
    assert error.value.reason_code == code
    assert code in str(error.value)


@pytest.mark.parametrize("image, encoding, code", [
    (np.zeros((2, 2, 3), np.float32), "rgb8", "dtype_mismatch"),
    (np.full((2, 2), 300), "mono8", "dtype_mismatch"),
    (np.zeros((2, 2, 4), np.uint8), "rgb8", "bad_shape"),
    (np.zeros((2, 3, 3), np.uint8), "yuv422", "odd_width_yuv"),
    (np.zeros(4, np.uint8), "mono8", "bad_shape"),
    (np.zeros((2, 2)), "png", "unknown_encoding"),
])
def test_array_to_image_fields_rejects(image, encoding, code):
    with pytest.raises(ImageFormatError) as error:
        array_to_image_fields(image, encoding)
    assert error.value.reason_code == code


def test_array_to_image_fields_casts_when_lossless():
    fields = array_to_image_fields(np.array([[1, 2], [3, 4]]), "mono16")
    assert fields["data"] == bytes([1, 0, 2, 0, 3, 0, 4, 0])


def test_to_rgb8_colour_orders():
    rgb = RNG.integers(0, 256, (3, 4, 3)).astype(np.uint8)
    alpha = np.full((3, 4, 1), 7, np.uint8)
    np.testing.assert_array_equal(to_rgb8(rgb, "rgb8"), rgb)
    np.testing.assert_array_equal(to_rgb8(rgb[:, :, ::-1], "bgr8"), rgb)
    np.testing.assert_array_equal(to_rgb8(np.concatenate([rgb, alpha], 2), "rgba8"), rgb)
    bgra = np.concatenate([rgb[:, :, ::-1], alpha], 2)
    np.testing.assert_array_equal(to_rgb8(bgra, "bgra8"), rgb)
    np.testing.assert_array_equal(to_rgb8(rgb[:, :, 0], "mono8"), rgb[:, :, [0, 0, 0]])


def test_to_rgb8_scales_deep_images():
    np.testing.assert_array_equal(to_rgb8(np.array([[0, 65535]], np.uint16), "mono16")[0, :, 0],
                                  [0, 255])
    depth = np.array([[500, 1000, 1500]], np.uint16)  # mm: stretched over the frame's range
    np.testing.assert_array_equal(to_rgb8(depth, "16UC1")[0, :, 1], [0, 128, 255])
    unit = np.array([[0.0, 0.5, 1.0, np.nan]], np.float32)  # 0..1 floats keep their scale
    np.testing.assert_array_equal(to_rgb8(unit, "32FC1")[0, :, 2], [0, 128, 255, 0])
    np.testing.assert_array_equal(to_rgb8(np.full((2, 2), 3.0), "64FC1"), np.zeros((2, 2, 3)))


@pytest.mark.parametrize("encoding", sorted(LAYOUT) + list(YUV))
def test_to_rgb8_shape_for_every_encoding(encoding):
    image = pair_constant_rgb() if encoding in YUV else random_image(encoding)
    decoded = image_to_array(**array_to_image_fields(image, encoding))
    rgb = to_rgb8(decoded, encoding)
    assert rgb.dtype == np.uint8 and rgb.shape == decoded.shape[:2] + (3,)


def test_preprocess_resizes_bilinear():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 320:] = 200
    out = preprocess_for_policy(frame)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 200
    assert ((out[0, :, 0] > 0) & (out[0, :, 0] < 200)).any()  # blended across the edge
    assert preprocess_for_policy(frame, size=(96, 128)).shape == (96, 128, 3)


def test_preprocess_returns_input_when_already_sized():
    frame = np.ones((224, 224, 3), np.uint8)
    assert preprocess_for_policy(frame) is frame
    with pytest.raises(ImageFormatError):
        preprocess_for_policy(np.zeros((224, 224), np.uint8))


@pytest.mark.skipif(not cv_bridge_available(), reason="cv_bridge (ROS 2) not installed")
@pytest.mark.parametrize("encoding", sorted(LAYOUT) + ["yuv422", "yuv422_yuy2"])
def test_matches_cv_bridge(encoding):
    from cv_bridge import CvBridge
    from sensor_msgs.msg import Image

    image = pair_constant_rgb() if encoding in YUV else random_image(encoding)
    fields = array_to_image_fields(image, encoding)
    msg = Image(height=fields["height"], width=fields["width"], encoding=encoding,
                is_bigendian=fields["is_bigendian"], step=fields["step"], data=fields["data"])
    ours = image_to_array(**fields)
    if encoding in YUV:
        theirs = CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8")
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2
    else:
        theirs = CvBridge().imgmsg_to_cv2(msg, desired_encoding="passthrough")
        np.testing.assert_array_equal(ours, theirs)
