"""The name(arguments) grammar every registry shares (`bts_jax.naming.calls`)."""

import pytest

from bts_jax.naming import calls


@pytest.mark.parametrize(
    "text,separator,parts",
    [
        ("flip|affine(rotate=10)|noise(0.03)", "|", ["flip", "affine(rotate=10)", "noise(0.03)"]),
        ("focal(gamma=2):1,dice:1", ",", ["focal(gamma=2):1", "dice:1"]),
        ("f(x=[1, 2], y={'a': 1}),g", ",", ["f(x=[1, 2], y={'a': 1})", "g"]),
        ("f(x='a,b|c'),g", ",", ["f(x='a,b|c')", "g"]),
        ("", ",", [""]),
    ],
)
def test_split_top_level_splits_outside_brackets_and_quotes(text, separator, parts):
    assert calls.split_top_level(text, separator) == parts


@pytest.mark.parametrize("text", ["f(1", "f(1))", "f('a)", "g[1"])
def test_split_top_level_refuses_unbalanced_text(text):
    with pytest.raises(ValueError, match="unbalanced"):
        calls.split_top_level(text, ",")


def test_arguments_are_literals_with_command_line_spellings():
    args, kwargs = calls.parse_arguments(" 0.3, (1, 2), 'a=b', k=true, n=None, m=null, s=-1e-3 ")
    assert args == (0.3, (1, 2), "a=b")
    assert kwargs == (("k", True), ("n", None), ("m", None), ("s", -1e-3))
    assert calls.parse_arguments("") == ((), ())


@pytest.mark.parametrize(
    "inner,message",
    [
        ("k=1, 2", r"positional argument '2' after keywords"),
        ("k=1, k=2", r"argument 'k' given twice"),
        ("os.getcwd()", r"argument 'os.getcwd\(\)' is not a number, string or true/false"),
        ("*a", r"argument '\*a' is not a number, string or true/false"),
        ("**a", r"argument '\*\*a' is not a number, string or true/false"),
    ],
)
def test_arguments_that_are_not_literals_or_out_of_order_are_refused(inner, message):
    with pytest.raises(ValueError, match=message):
        calls.parse_arguments(inner)


def test_parse_call_reads_names_and_import_paths():
    assert calls.parse_call(" cosine(final=0.05) ") == calls.Call("cosine", (), (("final", 0.05),))
    assert calls.parse_call("my.mod:Class.make(3)") == calls.Call("my.mod:Class.make", (3,))
    assert calls.parse_call("dice") == calls.Call("dice")
    with pytest.raises(ValueError, match="must end with"):
        calls.parse_call("dice(1")
    with pytest.raises(ValueError, match="neither a name nor an import path"):
        calls.parse_call("Dice-2")


def test_import_path_follows_dotted_attributes():
    assert calls.import_path("os.path:join") is __import__("os").path.join
    assert calls.import_path("bts_jax.naming.calls:Call.__name__") == "Call"
    with pytest.raises(ModuleNotFoundError):
        calls.import_path("no_such_module_here:f")
    with pytest.raises(AttributeError):
        calls.import_path("os:no_such_attribute")
