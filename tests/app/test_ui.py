"""The page's own logic without a browser: how a refused input and a failure reach the page and the server log, the
upload element that hands the handler the file undecoded, and the speed wording of the comparison tab."""

import gradio as gr
import pytest
from gradio.data_classes import ImageData

from diffusion.app.core import InputError
from diffusion.app.ui import page_errors, speed_comparison, undecoded


def test_a_refused_input_is_a_page_message_without_a_traceback(capsys):
    @page_errors
    def refuse():
        raise InputError("Enter a prompt.")

    with pytest.raises(gr.Error) as caught:
        refuse()
    assert caught.value.message == "Enter a prompt." and caught.value.print_exception is False
    assert "Traceback" not in capsys.readouterr().err


def test_a_failure_is_one_line_in_the_page_and_traced_in_the_log(capsys):
    @page_errors
    def fail():
        raise RuntimeError("out of memory")

    with pytest.raises(gr.Error, match="Generation failed"):
        fail()
    assert "Traceback" in capsys.readouterr().err


def test_the_upload_reaches_the_handler_as_its_path(tmp_path):
    element = undecoded(gr.Image(type="filepath"))
    path = tmp_path / "not_decoded.png"
    path.write_bytes(b"anything")
    assert element.preprocess(ImageData(path=str(path))) == str(path)
    assert element.preprocess(None) is None
    inline = element.preprocess(ImageData(url="data:image/png;base64,aGVsbG8="))
    assert inline.read() == b"hello"


@pytest.mark.parametrize(
    "teacher, student, words",
    [
        (0.9, 0.1, "9.0× faster than the teacher"),
        (0.098, 0.1, "about as fast as the teacher"),
        (0.09, 0.1, "1.1× slower than the teacher"),
        (0.1, 0.25, "2.5× slower than the teacher"),  # a short teacher run on a busy CPU: not "0.4× faster"
        (0.1, 0.0, ""),
    ],
)
def test_the_speed_wording_says_slower_when_it_is(teacher, student, words):
    assert speed_comparison(teacher, student) == words
