"""argparse pieces every ``timm-kan`` command shares: one-line errors, bounded numbers, ``key=value`` options."""
import argparse
import ast
import math
from typing import Any, Callable, Dict, NoReturn, Optional, Sequence, Tuple, Union

__all__ = ['OneLineParser', 'bounded', 'split_pair', 'KwargsAction', 'MODEL_KWARGS']


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``error: PROG: MESSAGE``, and exit status 2 (the usage block
    buried the message; ``--help`` still shows it). Sub-command parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f'error: {self.prog}: {message}\n')


def bounded(kind: type = int, low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
            high_open: bool = False) -> Callable[[str], Union[int, float]]:
    """An argparse ``type=``: a finite int or float within [low, high] (bounds left out when None, excluded when
    ``*_open``); anything else (nan and inf included) is a one-line error saying what the option expects."""
    what = 'an integer' if kind is int else 'a finite number'
    if low is not None and high is not None:
        what += f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        what += f" {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        what += f" {'<' if high_open else '<='} {high:g}"

    def parse(text: str) -> Union[int, float]:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (low is None or (value > low if low_open else value >= low))
                and (high is None or (value < high if high_open else value <= high))):
            raise argparse.ArgumentTypeError(f'must be {what}, got {text}')
        return value

    return parse


def split_pair(item: str, form: str = 'key=value') -> Tuple[str, str]:
    """``item`` split at its first ``=``; without one, or with nothing before it, a usage error naming ``form``."""
    key, sep, value = item.partition('=')
    if not sep or not key:
        raise argparse.ArgumentTypeError(f'expected {form}, got {item!r}')
    return key, value


class KwargsAction(argparse.Action):
    """timm's ``ParseKwargs`` (``key=value`` items; values through ``ast.literal_eval``, kept as strings when that
    fails), but a malformed item is a one-line usage error naming the option, not a ValueError traceback."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Sequence[str],
                 option_string: Optional[str] = None) -> None:
        kwargs: Dict[str, Any] = {}
        for item in values:
            if not item:
                continue
            try:
                key, value = split_pair(item)
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentError(self, str(e)) from None
            try:
                kwargs[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                kwargs[key] = value  # as timm: a bare word need not be quoted on the command line
        setattr(namespace, self.dest, kwargs)


# --model-kwargs of every command that builds models (add_argument keywords)
MODEL_KWARGS: Dict[str, Any] = dict(nargs='*', action=KwargsAction, help='create_model kwargs, key=value')
