"""The report's training curves: written for the runs that logged the metric, and without an
empty legend (and matplotlib's warning about it) where none did."""
import warnings

from dice_core.reporting.collect import ModelResults
from dice_core.reporting.figures import curve


def test_a_curve_is_written_with_or_without_logged_points_and_no_empty_legend(tmp_path):
    results = [ModelResults("dit-t", history=[(1, {"eval/fd_effnet": 3.0}),
                                              (2, {"eval/fd_effnet": 2.5})]),
               ModelResults("dice-t")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # matplotlib warns on a legend with no labels
        logged = curve(results, "eval/fd_effnet", "FD", tmp_path / "fd.png")
        empty = curve(results, "eval/is", "IS", tmp_path / "is.png")
    assert logged.read_bytes().startswith(b"\x89PNG") and empty.read_bytes().startswith(b"\x89PNG")
