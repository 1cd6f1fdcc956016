"""`clasp.common.json_files.read_json`: the document, or one error line naming the file, of the caller's class."""

import pytest

from clasp.common.json_files import JsonFileError, read_json
from clasp.errors import InputError


class _CallersError(InputError):
    pass


def test_reads_the_document(tmp_path):
    path = tmp_path / "doc.json"
    path.write_text('{"a": [1, 2.5, "é"]}', encoding="utf-8")
    assert read_json(path) == {"a": [1, 2.5, "é"]}
    assert read_json(str(path)) == {"a": [1, 2.5, "é"]}


def test_a_list_or_a_scalar_is_returned_as_is(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "number.json").write_text("3")
    assert read_json(tmp_path / "list.json") == [1, 2]
    assert read_json(tmp_path / "number.json") == 3


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(JsonFileError) as caught:
        read_json(path)
    assert str(caught.value) == f"{path}: not found"
    with pytest.raises(_CallersError) as caught:
        read_json(path, _CallersError, what="eval results")
    assert str(caught.value) == f"{path}: eval results not found"


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"", b"[" * 100_000 + b"]" * 100_000])
def test_unreadable_content_is_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(_CallersError) as caught:
        read_json(path, _CallersError)
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot be read as JSON (")
    assert "\n" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(_CallersError, match="cannot be read as JSON"):
        read_json(tmp_path, _CallersError)


def test_default_error_is_an_input_error():
    assert issubclass(JsonFileError, InputError) and issubclass(JsonFileError, ValueError)
