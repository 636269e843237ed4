"""User errors print one line and exit 2; real bugs keep their traceback."""

from __future__ import annotations

import argparse

import pytest

from ptycho_torch.cli.main import run_cli
from ptycho_torch.config import ConfigError
from ptycho_torch.data.validation import ScanValidationError
from ptycho_torch.errors import UserError


def _raise(error: BaseException):
    def command(args: argparse.Namespace) -> None:
        raise error
    return command


@pytest.mark.parametrize("error", [UserError("bad input; fix it"), ConfigError("model.N: got 3; use 32"),
                                   ScanValidationError(["diffraction: NaN"], "scan.npz"),
                                   FileNotFoundError("scan file x.npz does not exist")])
def test_user_errors_are_one_line_and_exit_2(error, capsys):
    assert run_cli(_raise(error), argparse.Namespace()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


@pytest.mark.parametrize("error", [KeyError("config"), ValueError("operands could not be broadcast"),
                                   TypeError("unsupported operand")])
def test_bugs_keep_their_traceback(error):
    with pytest.raises(type(error)):
        run_cli(_raise(error), argparse.Namespace())
