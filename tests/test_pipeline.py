import numpy as np
import pytest
import tensorflow as tf

from tfp_vae.data import DataError
from tfp_vae.pipeline import ArraySource, CsvSource, dataset, in_validation, scan, source_for


@pytest.fixture
def parts(tmp_path, rng):
    x = rng.normal(size=(900, 3)) * [1e-3, 1.0, 1e5] + [0.0, 1e4, 0.0]
    for i, rows in enumerate(np.array_split(x, 3)):
        np.savetxt(tmp_path / f"part-{i}.csv", rows, delimiter=",", header="a,b,c", comments="", fmt="%.10g")
    return x, str(tmp_path / "part-*.csv")


def rows_of(ds):
    return np.concatenate([batch.numpy() for batch in ds])


def test_a_glob_streams_the_same_rows_as_the_array(parts):
    x, pattern = parts
    source = source_for(pattern)
    assert isinstance(source, CsvSource) and source.columns == ["a", "b", "c"]
    np.testing.assert_allclose(rows_of(dataset(source, "all", 64)), x.astype(np.float32), rtol=1e-6)


def test_split_and_statistics_agree_between_memory_and_disk(parts):
    x, pattern = parts
    for source in (CsvSource(pattern), ArraySource(x)):
        found = scan(source, 0.2, seed=3)
        held_out = in_validation(np.arange(len(x)), 0.2, 3)
        assert (found.train_rows, found.validation_rows) == ((~held_out).sum(), held_out.sum())
        assert 0.1 < held_out.mean() < 0.3
        np.testing.assert_allclose(found.train_moments.mean, x[~held_out].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(rows_of(dataset(source, "validation", 50, 0.2, 3)),
                                   x[held_out].astype(np.float32), rtol=1e-6)
        train_rows = rows_of(dataset(source, "train", 50, 0.2, 3, shuffle=True))
        assert len(train_rows) == (~held_out).sum()
        np.testing.assert_allclose(np.sort(train_rows[:, 0]), np.sort(x[~held_out, 0].astype(np.float32)), rtol=1e-6)


def test_columns_blank_lines_and_dropped_rows(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,c\r\n1,2,3\r\n\r\n4,,6\r\n7,8,9\r\n")
    with pytest.raises(DataError, match="blank or NaN cell at line 4, column 'b'"):
        scan(CsvSource(tmp_path / "d.csv"), 0.0, 0)
    source = CsvSource(tmp_path / "d.csv", columns=["c", "b"], drop_nonfinite=True)
    assert scan(source, 0.0, 0).dropped_rows == 1
    np.testing.assert_array_equal(rows_of(dataset(source, "all", 10)), [[3, 2], [9, 8]])
    np.testing.assert_array_equal(rows_of(dataset(CsvSource(tmp_path / "d.csv", columns=["c", "a"]), "all", 10)),
                                  [[3, 1], [6, 4], [9, 7]])


def test_files_with_different_columns_are_refused(tmp_path):
    (tmp_path / "p-0.csv").write_text("a,b\n1,2\n")
    (tmp_path / "p-1.csv").write_text("a,c\n1,2\n")
    with pytest.raises(DataError, match=r"p-1.csv: columns \['a', 'c'\] differ"):
        scan(CsvSource(tmp_path / "p-*.csv"), 0.0, 0)


def test_the_hash_is_the_same_in_numpy_and_tensorflow():
    rows = np.arange(10_000, dtype=np.int64)
    np.testing.assert_array_equal(in_validation(rows, 0.3, 7), in_validation(tf.constant(rows), 0.3, 7).numpy())
