import numpy as np
import pytest
import tensorflow as tf

from tfp_vae.data import DataError, read_table
from tfp_vae.pipeline import (ArraySource, CsvSource, dataset, dequantization_noise, dequantized, in_validation,
                              integer_columns, scan, source_for)


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
    source = source_for(pattern, in_memory_bytes=0)
    assert isinstance(source, CsvSource) and source.columns == ["a", "b", "c"]
    in_memory = source_for(pattern)
    assert isinstance(in_memory, ArraySource) and in_memory.columns == ["a", "b", "c"]
    np.testing.assert_array_equal(rows_of(dataset(in_memory, "all", 64)), rows_of(dataset(source, "all", 64)))
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
    with pytest.raises(DataError, match="missing cell: blank, NA or NaN, at line 4, column 'b'"):
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
    np.testing.assert_array_equal(in_validation(rows, 0.3, 7, fold=2),
                                  in_validation(tf.constant(rows), 0.3, 7, fold=2).numpy())


def test_folds_of_a_quarter_hold_out_every_row_once_and_the_first_is_the_plain_split(tmp_path):
    rows = np.arange(1_000)
    folds = np.stack([in_validation(rows, 0.25, 3, fold) for fold in range(4)])
    np.testing.assert_array_equal(folds.sum(axis=0), np.ones(1_000))
    assert all(200 < count < 300 for count in folds.sum(axis=1))
    np.testing.assert_array_equal(folds[0], in_validation(rows, 0.25, 3))
    x = np.arange(2_000, dtype=np.float32).reshape(1_000, 2)
    np.savetxt(tmp_path / "d.csv", x, delimiter=",", header="a,b", comments="")
    for source in (ArraySource(x), CsvSource(tmp_path / "d.csv")):
        np.testing.assert_array_equal(rows_of(dataset(source, "validation", 64, 0.25, 3, fold=2)), x[folds[2]])
        np.testing.assert_array_equal(np.sort(rows_of(dataset(source, "train", 64, 0.25, 3, fold=2)), axis=0),
                                      x[~folds[2]])
        found = scan(source, 0.25, 3, fold=2)
        assert (found.train_rows, found.validation_rows) == ((~folds[2]).sum(), folds[2].sum())


CELLS = ["1", " 1", "1 ", "+1", "-1.5e3", ".5", "5.", "1e400", "inf", "-Infinity", "nan", "NaN",
         "1_000", "\uff11\uff12", "0x10", "1d3", "1,5", "one"]


def test_both_passes_share_one_definition_of_a_number():
    from tfp_vae.data import parse_number
    for cell in CELLS:
        try:
            python = parse_number(cell)
        except ValueError:
            python = None
        try:
            decoded = tf.io.decode_csv(tf.constant([cell.replace(",", ";")]), [tf.constant(np.nan)])[0].numpy()[0]
        except tf.errors.InvalidArgumentError:
            decoded = None
        if python is None:
            assert cell in ("1_000", "\uff11\uff12", "0x10", "1d3", "1,5", "one"), cell
        else:
            assert decoded is not None and (np.isnan(python) and np.isnan(decoded) or
                                            np.float32(python) == decoded), (cell, python, decoded)


def write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


@pytest.mark.parametrize("text, names", [
    ("\ufeffa,b\n1,2\n3,4\n5,6\n", ["a", "b"]),              # Excel's byte-order mark before a header
    ("\ufeff1,2\n3,4\n5,6\n", ["0", "1"]),                   # ... and before a first row of numbers
    ("\n\na,b\n1,2\n3,4\n\n5,6\n", ["a", "b"]),              # blank lines before the header and between rows
    ("# Data source: https://finance.yahoo.com\na,b\n1,2\n3,4\n5,6\n", ["a", "b"]),  # a comment line first
    ("# logged by unit 4\n\n  # at 10 Hz\n1,2\n3,4\n5,6\n", ["0", "1"]),  # comments, no header
], ids=["bom-header", "bom-numbers", "blank-lines", "comment-header", "comments-numbers"])
def test_the_streamed_rows_are_the_validated_rows(tmp_path, text, names):
    path = write(tmp_path / "data.csv", text)
    source = CsvSource(str(path))
    validated = np.concatenate([values for values, _, _ in source.blocks()])
    assert source.columns == names
    np.testing.assert_array_equal(rows_of(dataset(source, "all", 2)), validated.astype(np.float32))
    assert len(validated) == 3


def test_files_of_a_glob_each_skip_their_own_comment_lines(tmp_path):
    write(tmp_path / "part-1.csv", "# first day\n# second comment\na,b\n1,2\n3,4\n")
    write(tmp_path / "part-2.csv", "a,b\n5,6\n")
    source = CsvSource(str(tmp_path / "part-*.csv"))
    np.testing.assert_array_equal(rows_of(dataset(source, "all", 2)), [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(read_table(str(tmp_path / "part-*.csv")).values, [[1, 2], [3, 4], [5, 6]])
    write(tmp_path / "part-2.csv", "a,b\n5,x\n")
    with pytest.raises(DataError, match="part-2.csv: line 2, column 'b'"):
        list(source.blocks())
    write(tmp_path / "part-1.csv", "# first day\na,b\n1,2\n3,x\n")
    with pytest.raises(DataError, match="part-1.csv: line 4, column 'b'"):  # lines counted as an editor does
        list(source.blocks())


@pytest.mark.parametrize("text, message", [
    ("a,b\n1,2\n1_000,3\n", "line 3, column 'a': non-numeric value '1_000'"),
    ("a,b\n1,2\n\uff11,3\n", "line 3, column 'a': non-numeric value"),
    ('a,b\n1,2\n"3\n4",5\n', "column 'a': a quoted cell spans lines"),
], ids=["underscore", "full-width", "multi-line"])
def test_cells_tf_data_cannot_read_are_refused_by_the_validating_pass(tmp_path, text, message):
    source = CsvSource(str(write(tmp_path / "data.csv", text)))
    with pytest.raises(DataError, match=message):
        list(source.blocks())


def test_a_pipe_complex_numbers_and_ambiguous_names_are_refused(tmp_path):
    import os
    from tfp_vae.data import read_table
    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(DataError, match="pipe.csv: not a regular file"):
        source_for(str(tmp_path / "pipe.csv"))
    np.save(tmp_path / "complex.npy", np.ones((3, 2), np.complex64))
    with pytest.raises(DataError, match="complex numbers"):
        read_table(str(tmp_path / "complex.npy"))
    path = write(tmp_path / "twice.csv", "a,b,a\n1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match=r"column name 'a' appears 2 times \(columns 0, 2\); select it by index"):
        CsvSource(str(path), columns=["a"])
    assert CsvSource(str(path), columns=["2"]).columns == ["a"]


def test_columns_not_selected_are_never_parsed(tmp_path):
    path = write(tmp_path / "people.csv", 'id,name,height,weight\nA1,"Smith, J",1.80,75\nB2,Li,1.65,60\nC3,,1.72,\n')
    source = CsvSource(str(path), columns=["height", "weight"], drop_nonfinite=True)
    validated = np.concatenate([values for values, _, _ in source.blocks()])
    np.testing.assert_allclose(validated, [[1.80, 75.0], [1.65, 60.0]])
    np.testing.assert_allclose(rows_of(dataset(source, "all", 8)), validated.astype(np.float32))
    with pytest.raises(DataError, match="line 2, column 'id': non-numeric value 'A1'; read only the numeric "
                                        "columns with columns='height,weight'"):
        list(CsvSource(str(path)).blocks())
    with pytest.raises(DataError, match="line 4, column 'height': non-numeric value '1..72'$"):  # a typo, no hint
        list(CsvSource(str(write(tmp_path / "typo.csv", "height,weight\n1.80,75\n1.65,60\n1..72,70\n"))).blocks())
    source = CsvSource(str(path), columns="height,weight", drop_nonfinite=True)  # as the message says
    np.testing.assert_allclose(np.concatenate([values for values, _, _ in source.blocks()]), validated)


def test_integer_columns_get_the_same_noise_in_memory_on_disk_and_on_every_pass(tmp_path, rng):
    x = np.column_stack([rng.poisson(3.0, 900), rng.normal(size=900), np.full(900, 4.0), rng.integers(-5, 5, 900)])
    np.savetxt(tmp_path / "counts.csv", x, delimiter=",", header="a,b,c,d", comments="", fmt="%.10g")
    for source in (CsvSource(str(tmp_path / "counts.csv")), ArraySource(x)):
        columns = integer_columns(source)
        np.testing.assert_array_equal(columns, [0, 3])  # the constant column 2 keeps its own rule
        noisy = dequantized(source, columns, seed=5)
        streamed = rows_of(dataset(noisy, "all", 64))
        np.testing.assert_allclose(streamed, np.concatenate([values for values, _, _ in noisy.blocks()]), rtol=1e-6)
        np.testing.assert_allclose(rows_of(dataset(noisy, "validation", 50, 0.2, 3)),
                                   streamed[in_validation(np.arange(900), 0.2, 3)], rtol=1e-6)
        plain = rows_of(dataset(source, "all", 64))  # the source itself is left as it was
        np.testing.assert_allclose(plain, x, rtol=1e-6)
        noise = streamed - plain
        np.testing.assert_allclose(noise, dequantization_noise(np.arange(900), columns, 4, 5), atol=1e-5)
        assert (noise[:, [1, 2]] == 0).all() and (np.abs(noise[:, columns]) <= 0.5).all()
        assert abs(noise[:, columns].std() - 12**-0.5) < 0.01 and abs(noise[:, columns].mean()) < 0.02
    assert not np.allclose(dequantization_noise(np.arange(9), [0], 1, 5), dequantization_noise(np.arange(9), [0], 1, 6))


def test_integer_columns_are_judged_on_their_observed_cells():
    x = np.array([[1.0, 0.5, np.nan], [2.0, np.nan, 7.0], [np.nan, 1.0, 7.0], [3.0, 2.0, np.nan]], np.float32)
    np.testing.assert_array_equal(integer_columns(ArraySource(x, allow_missing=True)), [0])
