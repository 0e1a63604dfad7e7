"""python -m covidseg.report <multirun dir>: the same as covidseg-report."""

from covidseg.report.build import main

main()
