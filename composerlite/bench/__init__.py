"""Quality-versus-time benchmarks: run methods under one budget (runner), record them
(results), compare them (analysis) and report (report, plots)."""

from composerlite.bench.analysis import Group, MethodSummary, Speedup, crossing, group_results, summarize
from composerlite.bench.report import build_report
from composerlite.bench.results import BenchResults, EvalPoint, Method, RunRecord, load_results, save_results
from composerlite.bench.runner import parse_algos, parse_recipe, run_bench

__all__ = [
    "BenchResults", "EvalPoint", "Group", "Method", "MethodSummary", "RunRecord", "Speedup", "build_report", "crossing",
    "group_results", "load_results", "parse_algos", "parse_recipe", "run_bench", "save_results",
    "summarize",
]
