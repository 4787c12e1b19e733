"""The report's views for people and tools: HTML, Markdown, SARIF 2.1.0."""
