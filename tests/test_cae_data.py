"""Heatmap loading, resizing/normalisation and in-memory batching for the CAE."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wildcapture.cae.heatmap_data import HeatmapFile, HeatmapPrep, epoch_batches, load_heatmaps, prepare_heatmaps


def test_max_norm_gives_per_image_max_one():
    heatmaps = torch.rand(5, 14, 14) * torch.arange(1, 6).view(5, 1, 1)
    out = prepare_heatmaps(heatmaps, 32, norm="max")
    assert out.shape == (5, 1, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out.amax(dim=(1, 2, 3)), torch.ones(5))
    # max-norm is a pure rescale: proportional to the resized map
    resized = F.interpolate(heatmaps.unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, resized / resized.amax(dim=(2, 3), keepdim=True))


def test_minmax_norm_gives_min_zero_max_one():
    out = prepare_heatmaps(torch.rand(4, 7, 7) + 3.0, 16, norm="minmax")
    torch.testing.assert_close(out.amin(dim=(1, 2, 3)), torch.zeros(4))
    torch.testing.assert_close(out.amax(dim=(1, 2, 3)), torch.ones(4))


def test_constant_and_zero_maps_become_zeros():
    heatmaps = torch.stack([torch.full((4, 4), 0.3), torch.zeros(4, 4), torch.rand(4, 4)])
    minmax = prepare_heatmaps(heatmaps, 8, norm="minmax")
    assert torch.isfinite(minmax).all()
    assert torch.equal(minmax[0], torch.zeros(1, 8, 8)) and torch.equal(minmax[1], torch.zeros(1, 8, 8))
    maxed = prepare_heatmaps(heatmaps, 8, norm="max")
    assert torch.isfinite(maxed).all()
    assert torch.equal(maxed[1], torch.zeros(1, 8, 8))
    torch.testing.assert_close(maxed[0], torch.ones(1, 8, 8))


def test_nearest_upsampling_repeats_cells():
    heatmap = np.array([[0.1, 0.2], [0.3, 0.4]], dtype=np.float32)
    out = prepare_heatmaps(torch.from_numpy(heatmap)[None], 4, mode="nearest", norm="none")
    np.testing.assert_array_equal(out[0, 0].numpy(), np.kron(heatmap, np.ones((2, 2), dtype=np.float32)))


def test_bilinear_equals_f_interpolate():
    heatmaps = torch.rand(3, 14, 14)
    out = prepare_heatmaps(heatmaps, 64, mode="bilinear", norm="none")
    expected = F.interpolate(heatmaps[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.equal(out, expected)


def test_unknown_mode_or_norm_lists_valid_ones():
    with pytest.raises(ValueError, match="bilinear, nearest"):
        prepare_heatmaps(torch.rand(1, 4, 4), 8, mode="bicubic")
    with pytest.raises(ValueError, match="max, minmax, none"):
        prepare_heatmaps(torch.rand(1, 4, 4), 8, norm="zscore")
    with pytest.raises(ValueError, match="max, minmax, none"):
        HeatmapPrep(8, "bilinear", "zscore")


@pytest.mark.parametrize("mode, norm", [("bilinear", "max"), ("nearest", "minmax"), ("bilinear", "none")])
def test_prep_of_any_batch_equals_preparing_all_at_once(mode, norm):
    heatmaps = torch.rand(10, 14, 14, generator=torch.Generator().manual_seed(0))
    heatmaps[3] = 0.0  # an all-zero map among others
    prep = HeatmapPrep(32, mode, norm)
    whole = prepare_heatmaps(heatmaps, 32, mode, norm)
    for batch_size in (1, 4, 10):
        batches = torch.cat([prep(b) for b in heatmaps.split(batch_size)])
        assert batches.shape == (10, 1, 32, 32) and batches.dtype == torch.float32
        assert torch.equal(batches, whole)
    shuffled = torch.tensor([7, 3, 0, 9])
    assert torch.equal(prep(heatmaps.index_select(0, shuffled)), whole.index_select(0, shuffled))
    assert torch.equal(prep(heatmaps.double()), whole)  # any float input is prepared in float32
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        prep(heatmaps[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prep_runs_on_the_batch_device():
    heatmaps = torch.rand(6, 14, 14, generator=torch.Generator().manual_seed(0))
    for mode, norm in (("bilinear", "max"), ("nearest", "minmax")):
        prep = HeatmapPrep(128, mode, norm)
        on_gpu = prep(heatmaps.cuda())
        assert on_gpu.device.type == "cuda"
        torch.testing.assert_close(on_gpu.cpu(), prep(heatmaps), rtol=1e-6, atol=1e-7)


def test_epoch_batches_cover_every_row_once_seeded_and_prepared_like_the_whole_set():
    heatmaps = torch.rand(10, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    prep = HeatmapPrep(8, "bilinear", "max")
    whole = prepare_heatmaps(heatmaps, 8)
    one_batch = 4 * 3 * 8 * 8 * 4  # bytes of one prepared batch of 4: a chunk per batch
    drawn = [(idx, batch.clone()) for idx, batch in
             epoch_batches(heatmaps, prep, 4, "cpu", True, torch.Generator().manual_seed(1), chunk_bytes=one_batch)]
    idx = torch.cat([i for i, _ in drawn])
    assert [len(i) for i, _ in drawn] == [4, 4, 2] and sorted(idx.tolist()) == list(range(10))
    assert torch.equal(idx, torch.randperm(10, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(torch.cat([b for _, b in drawn]), whole[idx])
    in_order = list(epoch_batches(heatmaps, prep, 3, "cpu", False, chunk_bytes=one_batch))
    assert torch.cat([i for i, _ in in_order]).tolist() == list(range(10))


@pytest.mark.parametrize("from_file", [False, True])
@pytest.mark.parametrize("size", [16, None])
def test_epoch_batches_reuse_one_buffer_across_chunks(tmp_path, from_file, size):
    heatmaps = torch.rand(12, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "h.npy", heatmaps.numpy())
    source = HeatmapFile(tmp_path / "h.npy") if from_file else heatmaps
    prep = HeatmapPrep(size)
    side = size or 4
    batches = epoch_batches(source, prep, 3, "cpu", True, torch.Generator().manual_seed(0),
                            chunk_bytes=3 * 2 * side * side * 4)
    drawn = [(idx, batch.data_ptr(), batch.clone()) for idx, batch in batches]
    assert len({pointer for _, pointer, _ in drawn}) == 1  # four chunks of one batch each, in the same memory
    for idx, _, batch in drawn:
        assert torch.equal(batch, prep(heatmaps[idx]))


@pytest.mark.parametrize("size, mode, norm", [(16, "bilinear", "max"), (16, "nearest", "minmax"),
                                              (None, "bilinear", "max"), (16, "bilinear", "none"),
                                              (None, "nearest", "minmax")])
def test_prep_into_a_buffer_equals_a_fresh_result(size, mode, norm):
    heatmaps = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(0)).half()
    prep = HeatmapPrep(size, mode, norm)
    out = torch.full((5, *prep.output_shape(heatmaps.shape)), float("nan"))
    result = prep(heatmaps, out=out)
    assert result.data_ptr() == out.data_ptr() and torch.equal(result, prep(heatmaps))
    with pytest.raises(ValueError, match="out has shape"):
        prep(heatmaps, out=out[:4])


def test_preparing_without_a_buffer_leaves_the_callers_batch_untouched():
    heatmaps = torch.rand(4, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    kept = heatmaps.clone()
    for prep in (HeatmapPrep(None, "bilinear", "max"), HeatmapPrep(None, "nearest", "minmax"), HeatmapPrep(6)):
        assert prep(heatmaps).data_ptr() != heatmaps.data_ptr()
        assert torch.equal(heatmaps, kept)


def test_a_map_with_a_nan_stays_nan_instead_of_becoming_zeros():
    heatmaps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    heatmaps[1, 2, 2] = float("nan")
    for norm in ("max", "minmax"):
        out = HeatmapPrep(8, "bilinear", norm)(heatmaps)
        assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).any()


def test_npy_round_trip(tmp_path):
    heatmaps = np.random.default_rng(0).random((6, 14, 14)).astype(np.float32)
    path = tmp_path / "heatmaps.npy"
    np.save(path, heatmaps)
    loaded = load_heatmaps(path)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, heatmaps)


def test_missing_file_error_names_path(tmp_path):
    path = tmp_path / "nowhere" / "heatmaps.npy"
    with pytest.raises(FileNotFoundError, match=str(path)):
        load_heatmaps(path)


def test_corrupt_npy_error_names_file(tmp_path):
    path = tmp_path / "heatmaps.npy"
    path.write_bytes(b"\x00garbage bytes, not an array" * 3)
    with pytest.raises(ValueError, match="heatmaps.npy"):
        load_heatmaps(path)


def test_npy_with_wrong_ndim_rejected(tmp_path):
    path = tmp_path / "flat.npy"
    np.save(path, np.zeros((4, 196), dtype=np.float32))
    with pytest.raises(ValueError, match=r"flat\.npy.*\(N, h, w\)"):
        load_heatmaps(path)


def test_csv_of_pngs_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 16, 16), dtype=np.uint8)
    (tmp_path / "maps").mkdir()
    rows = ["img,label"]
    for i, image in enumerate(pixels):
        Image.fromarray(image, mode="L").save(tmp_path / "maps" / f"{i}.png")
        name = f"maps/{i}.png" if i != 1 else str(tmp_path / "maps" / f"{i}.png")  # relative and absolute
        rows.append(f"{name},{i % 2}")
    csv_path = tmp_path / "heatmaps.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    loaded = load_heatmaps(csv_path)
    assert loaded.shape == (3, 16, 16) and loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, pixels.astype(np.float32) / 255.0, rtol=0, atol=1e-7)


def test_csv_with_unreadable_png_names_it(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    csv_path = tmp_path / "heatmaps.csv"
    csv_path.write_text("img,label\nbad.png,0\n")
    with pytest.raises(ValueError, match="bad.png"):
        load_heatmaps(csv_path)


def test_multichannel_maps_are_normalised_per_image_and_channel_by_hand():
    # image 0: channel 0 has max 4 (min 1), channel 1 max 0.5 (min -0.5); image 1: channel 0 constant 2, channel 1 zero
    heatmaps = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.5, 0.0], [-0.5, 0.25]]],
                             [[[2.0, 2.0], [2.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    maxed = prepare_heatmaps(heatmaps, None, norm="max")
    expected = torch.tensor([[[[0.25, 0.5], [0.75, 1.0]], [[1.0, 0.0], [-1.0, 0.5]]],
                             [[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    assert maxed.shape == (2, 2, 2, 2)
    torch.testing.assert_close(maxed, expected, rtol=0, atol=0)
    minmax = prepare_heatmaps(heatmaps, None, norm="minmax")
    expected = torch.tensor([[[[0.0, 1 / 3], [2 / 3, 1.0]], [[1.0, 0.5], [0.0, 0.75]]],
                             [[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    torch.testing.assert_close(minmax, expected)
    assert torch.equal(prepare_heatmaps(heatmaps, None, norm="none"), heatmaps)


@pytest.mark.parametrize("mode, norm", [("bilinear", "max"), ("nearest", "minmax")])
def test_each_channel_is_prepared_like_a_single_map(mode, norm):
    heatmaps = torch.rand(5, 4, 7, 7, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 5).view(1, 4, 1, 1)
    out = HeatmapPrep(32, mode, norm)(heatmaps)
    assert out.shape == (5, 4, 32, 32)
    for c in range(4):
        assert torch.equal(out[:, c], prepare_heatmaps(heatmaps[:, c], 32, mode, norm)[:, 0])


def test_one_channel_input_is_prepared_bit_identically_with_or_without_the_channel_axis():
    heatmaps = torch.rand(6, 14, 14, generator=torch.Generator().manual_seed(0))
    for prep in (HeatmapPrep(32, "bilinear", "max"), HeatmapPrep(16, "nearest", "minmax"), HeatmapPrep(None)):
        assert torch.equal(prep(heatmaps), prep(heatmaps[:, None]))
    # and the same as the former preparation: unsqueeze, F.interpolate, divide by the max
    x = F.interpolate(heatmaps.unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.equal(HeatmapPrep(32)(heatmaps), torch.where(x.amax((2, 3), True) > 0, x / x.amax((2, 3), True), 0.0))


def test_size_none_or_the_native_grid_keeps_the_grid():
    heatmaps = torch.rand(3, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    native = HeatmapPrep(None, "bilinear", "none")
    assert torch.equal(native(heatmaps), heatmaps)
    assert native.output_shape(heatmaps.shape) == (2, 5, 7)
    assert HeatmapPrep(32).output_shape(heatmaps.shape) == (2, 32, 32)
    assert HeatmapPrep(32).output_shape((3, 5, 7)) == (1, 32, 32)
    square = torch.rand(3, 7, 7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(HeatmapPrep(7, "bilinear", "none")(square), square[:, None])
    assert prepare_heatmaps(heatmaps[:0], None).shape == (0, 2, 5, 7)
    with pytest.raises(ValueError, match=r"\(N, C, h, w\)"):
        native(torch.rand(1, 1, 1, 4, 4))


def test_npy_of_a_multichannel_kind_round_trips_and_5d_is_rejected(tmp_path):
    heatmaps = np.random.default_rng(0).random((6, 3, 4, 4)).astype(np.float64)
    np.save(tmp_path / "heads.npy", heatmaps)
    loaded = load_heatmaps(tmp_path / "heads.npy")
    assert loaded.dtype == np.float32 and loaded.shape == (6, 3, 4, 4)
    np.testing.assert_array_equal(loaded, heatmaps.astype(np.float32))
    np.save(tmp_path / "five.npy", np.zeros((2, 1, 3, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"five\.npy.*\(N, C, h, w\)"):
        load_heatmaps(tmp_path / "five.npy")
