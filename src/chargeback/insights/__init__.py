"""Insights: trends, forecasts, budgets and the finance report, over the marts (docs/INSIGHTS.md)."""
