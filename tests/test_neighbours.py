"""Filling gaps from the nearest reference rows (`tfp_vae.neighbours`)."""

import numpy as np
import pytest
import tensorflow as tf
from sklearn.impute import KNNImputer

from tfp_vae import Config, export, export_saved_model, load_imputer, load_run, read_candidates, train
from tfp_vae.blend import FillBlend
from tfp_vae.errors import DataError, ExportError
from tfp_vae.neighbours import NAME, NeighbourFill, reference_rows


@pytest.fixture(scope="module")
def tables():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(90, 2)) @ rng.normal(size=(2, 4)) * [1.0, 10.0, 0.1, 3.0] + [0.0, 50.0, -2.0, 7.0]
    gappy = np.where(rng.random(x.shape) < 0.25, np.nan, x).astype(np.float32)
    return gappy[:70], gappy[70:]


def test_the_fills_are_scikit_learns_on_standardised_columns(tables):
    reference, rows = tables
    fill = NeighbourFill(reference, neighbours=3)
    centre, scale = np.nanmean(reference, axis=0), np.nanstd(reference, axis=0)
    expected = KNNImputer(n_neighbors=3).fit((reference - centre) / scale).transform((rows - centre) / scale)
    filled, stddev = fill.impute(rows)
    np.testing.assert_allclose((filled - centre) / scale, expected, atol=1e-4)
    observed = ~np.isnan(rows)
    assert np.array_equal(filled[observed], rows[observed]) and np.all(stddev[observed] == 0)
    assert np.all(stddev[~observed] > 0)


def test_the_spread_and_the_draws_are_the_donors_values():
    reference = np.array([[0.0, 1.0], [0.1, 3.0], [5.0, 100.0], [np.nan, 7.0]], np.float32)
    fill = NeighbourFill(reference, neighbours=2)
    filled, stddev, draws = fill.impute(np.array([[0.05, np.nan]], np.float32), draws=200, seed=1)
    # The two nearest rows observing column 1 are the first two (distance over column 0 alone).
    np.testing.assert_allclose([filled[0, 1], stddev[0, 1]], [2.0, 1.0], rtol=1e-6)
    assert set(np.unique(draws[:, 0, 1])) == {1.0, 3.0} and np.all(draws[:, 0, 0] == np.float32(0.05))
    again = fill.impute(np.array([[0.05, np.nan]], np.float32), draws=200, seed=1)[2]
    assert np.array_equal(draws, again)


def test_a_row_with_no_donor_gets_the_columns_mean_and_spread():
    reference = np.array([[0.0, np.nan], [np.nan, 2.0], [np.nan, 4.0]], np.float32)
    filled, stddev = NeighbourFill(reference).impute(np.array([[1.0, np.nan]], np.float32))
    # No reference row observes column 1 together with column 0, the row's one observed cell.
    np.testing.assert_allclose([filled[0, 1], stddev[0, 1]], [3.0, 1.0])


def test_the_tensor_path_is_the_arrays(tables):
    reference, rows = tables
    fill = NeighbourFill(reference)
    filled, stddev = fill.impute(rows)
    tensors = fill.imputation(tf.constant(rows))
    np.testing.assert_array_equal(tensors[0].numpy(), filled)
    np.testing.assert_array_equal(tensors[1].numpy(), stddev)


def test_a_blend_takes_it_as_a_member(tables):
    reference, rows = tables
    near, wide = NeighbourFill(reference, neighbours=1), NeighbourFill(reference, neighbours=10)
    filled = FillBlend([near, wide], [0.25, 0.75]).impute(rows)[0]
    expected = 0.25 * near.impute(rows)[0] + 0.75 * wide.impute(rows)[0]
    np.testing.assert_allclose(filled, expected, rtol=1e-5)


def test_bad_rows_are_refused(tables):
    reference, rows = tables
    with pytest.raises(DataError, match="expected 4 features"):
        NeighbourFill(reference).impute(rows[:, :3])
    with pytest.raises(DataError, match="non-finite value inf at row 0, column 2"):
        NeighbourFill(reference).impute(np.array([[1.0, 2.0, np.inf, 0.0]], np.float32))
    with pytest.raises(ValueError, match="at least one observed value in every column"):
        NeighbourFill(np.array([[1.0, np.nan], [2.0, np.nan]], np.float32))



def test_reference_rows_are_every_row_or_a_uniform_draw_of_them_in_order():
    rows = np.arange(300, dtype=np.float32)[:, np.newaxis]
    blocks = lambda: (rows[start:start + 70] for start in range(0, 300, 70))  # noqa: E731
    np.testing.assert_array_equal(reference_rows(blocks(), limit=300), rows)
    drawn = reference_rows(blocks(), limit=100, seed=3)
    assert len(drawn) == len(np.unique(drawn)) == 100 and np.all(np.diff(drawn[:, 0]) > 0)
    np.testing.assert_array_equal(drawn, reference_rows(blocks(), limit=100, seed=3))
    # Uniform over the rows: the last block's rows are drawn as often as the first's.
    counts = np.zeros(300)
    for seed in range(200):
        counts[reference_rows(blocks(), limit=100, seed=seed)[:, 0].astype(int)] += 1
    assert abs(counts[:70].mean() - counts[210:].mean()) < 0.1 * 200 / 3

@pytest.mark.own_process
def test_selection_blends_the_nearest_rows_where_they_fill_best_and_the_run_and_its_export_keep_them(tmp_path):
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, 300)
    x = np.stack([np.cos(angle), np.sin(angle), np.cos(2 * angle), np.sin(2 * angle)], axis=1) * [1, 1, 5, 5]
    gappy = np.where(rng.random(x.shape) < 0.2, np.nan, x + 0.01 * rng.normal(size=x.shape)).astype(np.float32)
    gappy[np.isnan(gappy).all(axis=1), 0] = 1.0
    gappy[:, 2] = np.round(gappy[:, 2])  # whole numbers, read dequantised in training
    # A curve no Gaussian follows (its columns are uncorrelated): only untrained Gaussians compete, and the
    # nearest rows fill better.
    train(Config(epochs=0, hidden=(), decoder_scale="shared", transform="none", allow_missing=True, seed=0),
          gappy, tmp_path / "run", verbose=0)
    table = {row["name"]: row for row in read_candidates(tmp_path / "run")}
    assert table[NAME]["chosen"] == "False" and float(table[NAME]["fill_weight"]) > 0.5
    assert float(table[NAME]["validation_fill_rmse"]) < 0.9 * min(
        float(row["validation_fill_rmse"]) for name, row in table.items() if name != NAME)
    imputer = load_imputer(tmp_path / "run")
    near = [member for member in imputer.members if isinstance(member, NeighbourFill)]
    assert len(near) == 1 and np.array_equal(near[0].rows, gappy, equal_nan=True)  # every row, in order, as given
    draws = imputer.impute(gappy, draws=5, seed=1)[2][:, :, 2]
    np.testing.assert_array_equal(draws, np.round(draws))
    model = load_run(tmp_path / "run")[1]
    # The reference rows count toward what a graph can hold as constants, beside every model's weights.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export, "MAX_FROZEN_WEIGHT_BYTES", near[0].constant_bytes)
        with pytest.raises(ExportError, match="MiB of weights is more than"):
            export_saved_model(model, str(tmp_path / "exports"), imputer=imputer)
    assert export_saved_model(model, str(tmp_path / "exports"), imputer=imputer)
    served = tf.saved_model.load(str(tmp_path / "exports" / "1")).signatures["impute"](x=tf.constant(gappy[:20]))
    np.testing.assert_allclose(served["x"].numpy(), imputer.impute(gappy[:20])[0], rtol=1e-5, atol=1e-5)


def test_no_rows_give_empty_fills_and_draws(tables):
    reference, _ = tables
    filled, stddev, draws = NeighbourFill(reference).impute(np.zeros([0, 4], np.float32), draws=3)
    assert filled.shape == stddev.shape == (0, 4) and draws.shape == (3, 0, 4)
