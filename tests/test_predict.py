"""Predict, then measure (fftd_course/checks/predict.py): a prediction must exist before a check grades, and
the cell after the measurement shows the prediction beside the measured value."""

import pytest

from fftd_course import checks
from fftd_course.checks import predict
from fftd_course.course.sources import strip_solutions


def stub():
    raise NotImplementedError("Exercise: write your code here, then run the check cell below.")


def written():
    return "larger"


def placeholder():
    return ...


def measure_twice(x):
    """An exercise's answer that a graded check calls."""
    return 2 * x


def check_measure_twice(answer):
    """A stand-in for a chapter's graded check: it calls the learner's function and compares."""
    def trial():
        if answer(3) != 6:
            raise checks.core.CheckFailure("measure_twice(3) should be 6")
    return checks.run_check("measure_twice", trial, hint="double it")


@pytest.mark.parametrize("missing", [placeholder, None, ..., "", "...", {"attention": "equal", "conv": None}])
def test_a_missing_prediction_fails_and_says_what_to_do(missing, lenient_env, capsys):
    result = checks.check_prediction(missing)
    assert result.status == "fail"
    assert "write your prediction in the cell above first" in result.message
    assert "FAIL" in capsys.readouterr().out


def test_a_missing_prediction_raises_in_strict_mode(strict):
    with pytest.raises(checks.ExerciseFailed, match="write your prediction in the cell above first"):
        checks.check_prediction(placeholder)


@pytest.mark.parametrize("given", [written, "smaller", 0, False, 3.5, {"attention": "equal", "conv": "differs"}])
def test_any_prediction_passes(given, strict, capsys):
    assert checks.check_prediction(given).status == "pass"
    assert "PASS" in capsys.readouterr().out


def test_the_stub_of_a_student_notebook_is_not_attempted_and_never_raises(strict, capsys):
    assert checks.check_prediction(stub).status == "not attempted"
    assert "not attempted yet" in capsys.readouterr().out


def test_choices_are_enforced_when_given(lenient_env):
    assert checks.check_prediction(written, choices=("larger", "smaller")).status == "pass"
    result = checks.check_prediction("bigger", choices=("larger", "smaller"))
    assert result.status == "fail" and "'larger', 'smaller'" in result.message


def test_a_graded_check_waits_for_the_prediction(lenient_env, capsys):
    # with a prediction, the check gets the learner's answer itself and grades it
    assert checks.with_prediction(written, measure_twice) is measure_twice
    assert check_measure_twice(checks.with_prediction(written, measure_twice)).status == "pass"
    # a placeholder: the check FAILs with what to do, even though the answer is right
    result = check_measure_twice(checks.with_prediction(placeholder, measure_twice))
    assert result.status == "fail" and "write your prediction in the cell above first" in result.message
    # the student notebook as released (both stubs): not attempted, so "Run All" goes on under strict checks
    assert check_measure_twice(checks.with_prediction(stub, stub)).status == "not attempted"
    # a wrong answer after a prediction: the check's own verdict
    assert check_measure_twice(checks.with_prediction(written, lambda x: x)).status == "fail"


def test_a_graded_check_with_a_placeholder_raises_in_strict_mode(strict):
    with pytest.raises(checks.ExerciseFailed, match="prediction"):
        check_measure_twice(checks.with_prediction(placeholder, measure_twice))
    assert check_measure_twice(checks.with_prediction(stub, measure_twice)).status == "not attempted"


def test_side_by_side_shows_both_values(strict, capsys):
    checks.compare_prediction(written, 3.2117, what="spread of gradient norms")
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "spread of gradient norms" in line)
    assert "larger" in line and "3.212" in line  # one row: the prediction beside the measurement
    assert "you predicted" in out and "measured" in out


def test_side_by_side_per_item_with_agreement(strict, capsys):
    prediction = {"attention block": "equal", "3x3 convolution": "equal"}
    measured = {"attention block": "equal", "3x3 convolution": "differ completely"}
    checks.compare_prediction(prediction, measured, agrees=lambda p, m: p == m)
    rows = {line.split("|")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    assert "equal" in rows["attention block"] and rows["attention block"].rstrip().endswith("yes")
    assert "differ completely" in rows["3x3 convolution"] and rows["3x3 convolution"].rstrip().endswith("no")


def test_one_predicted_value_stands_beside_every_measured_row(strict, capsys):
    checks.compare_prediction("the whole face", {"code (0, 0)": "the whole face (100%)", "code (1, 2)": "its block"})
    rows = [line for line in capsys.readouterr().out.splitlines() if "|" in line]
    assert len(rows) == 3, rows  # the header and one row per measured item, nothing per character of the string
    assert "the whole face" in rows[1] and "its block" in rows[2] and rows[2].count("the whole face") == 1


def test_side_by_side_before_anything_is_written_never_raises(strict, capsys):
    checks.compare_prediction(stub, None, what="distance")
    out = capsys.readouterr().out
    assert "not attempted yet" in out and "(no prediction yet)" in out and "(not measured yet)" in out
    checks.compare_prediction(placeholder, 0.25, what="distance")  # a FAIL is shown, not raised: feedback only
    out = capsys.readouterr().out
    assert "write your prediction in the cell above first" in out and "0.25" in out


def test_release_turns_a_prediction_cell_into_a_stub_that_run_all_survives():
    source = ('def predicted_spread() -> str:\n    """Larger, smaller or the same?"""\n'
              '    ### BEGIN SOLUTION\n    return "larger"\n    ### END SOLUTION\n')
    student = strip_solutions(source)
    assert '"larger"' not in student and "raise NotImplementedError" in student
    namespace = {}
    exec(student, namespace)  # defining the function runs; only calling it raises
    assert predict.read_prediction(namespace["predicted_spread"]) == ("not attempted", None)
