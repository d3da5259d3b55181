"""Cron expressions both schedulers accept: the Kubernetes CronJob controller (robfig/cron's
standard parser) and BusyBox crond, which runs scheduled containers on Docker hosts.

Only their common ground is allowed: five fields (minute hour day-of-month month day-of-week)
of numbers, `*`, ranges `a-b`, steps `/n` and comma lists. Names (`mon`, `jan`), macros
(`@daily`), `?`, `L`, `W`, `#` and seconds are refused, because one of the two schedulers
reads them differently or not at all. An expression that can never fire (`0 0 31 2 *`) is
refused too.
"""

from __future__ import annotations

import re

FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 6),
)
_ITEM = re.compile(r"^(?:(\*)|(\d+)(?:-(\d+))?)(?:/(\d+))?$")
# The longest each month can be (February in a leap year).
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
ALLOWED = ("five fields (minute hour day-of-month month day-of-week) of numbers, '*', ranges a-b, "
           "steps /n and comma lists, e.g. '30 3 * * *'")


def _values(text: str, name: str, low: int, high: int) -> set[int]:
    """The values one field selects; ValueError naming the field when it is malformed."""
    chosen: set[int] = set()
    for item in text.split(","):
        match = _ITEM.match(item)
        if not match:
            raise ValueError(f"{name} field '{text}': '{item}' is not a number, '*', a range or a step")
        star, first, last, step = match.groups()
        if star:
            start, end = low, high
        else:
            start = int(first)
            end = int(last) if last is not None else (high if step else start)
            for value in (start, end):
                if not low <= value <= high:
                    raise ValueError(f"{name} field '{text}': {value} is outside {low}-{high}")
            if end < start:
                raise ValueError(f"{name} field '{text}': the range {start}-{end} runs backwards")
        stride = int(step) if step else 1
        if stride < 1:
            raise ValueError(f"{name} field '{text}': a step must be at least 1")
        chosen.update(range(start, end + 1, stride))
    return chosen


def problem(expression: str) -> str | None:
    """Why `expression` is not an allowed cron expression, or None when it is."""
    fields = expression.split()
    if len(fields) != 5:
        return f"must be {ALLOWED}; got {len(fields)} field(s)"
    try:
        chosen = [_values(text, name, low, high) for text, (name, low, high) in zip(fields, FIELDS, strict=True)]
    except ValueError as exc:
        return f"{exc}; allowed: {ALLOWED}"
    days, months, weekdays = chosen[2], chosen[3], fields[4]
    # Both schedulers fire on day-of-month OR day-of-week when both are restricted; with the
    # day of week unrestricted, some chosen day must exist in some chosen month.
    if weekdays == "*" and not any(day <= _MONTH_DAYS[month - 1] for day in days for month in months):
        return f"never fires: no chosen month has day {min(days)} or later"
    return None


def validate(expression: str) -> str:
    """A pydantic validator: the expression, normalised to single spaces."""
    found = problem(expression)
    if found:
        raise ValueError(found)
    return " ".join(expression.split())


def longest_gap_minutes(expression: str) -> int:
    """The longest time between two consecutive firings of a valid expression, in minutes, over
    two leap-year cycles (2024-01-01, a Monday, to 2031-12-31): what a job on this schedule
    may be late by before a run is surely missing. Both schedulers' day rule: day-of-month OR
    day-of-week when both are restricted, else the restricted one."""
    minutes, hours, days, months, weekdays = (
        _values(text, name, low, high) for text, (name, low, high) in zip(expression.split(), FIELDS, strict=True))
    dom_any, dow_any = expression.split()[2].startswith("*"), expression.split()[4].startswith("*")
    times = sorted(h * 60 + m for h in hours for m in minutes)
    within = max((b - a for a, b in zip(times, times[1:], strict=False)), default=0)
    fire_days: list[int] = []
    day = 0
    for year in range(2024, 2032):
        for month in range(1, 13):
            length = _MONTH_DAYS[month - 1] if month != 2 else (29 if year % 4 == 0 else 28)
            for dom in range(1, length + 1):
                dow = (day + 1) % 7  # 2024-01-01 was a Monday (cron: 1)
                if month in months:
                    by_dom, by_dow = dom in days, dow in weekdays
                    if (by_dom and by_dow) if (dom_any or dow_any) else (by_dom or by_dow):
                        fire_days.append(day)
                day += 1
    between = max((b - a) * 1440 - times[-1] + times[0] for a, b in zip(fire_days, fire_days[1:], strict=False))
    return max(within, between)
