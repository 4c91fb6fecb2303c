"""Reports: one folder with report.md, report.html and the PNG plots they show.

Each family adds sections (text, tables, figures); `Report.write` renders both formats at once,
so the Markdown and the HTML always say the same thing.
"""
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..errors import ConvslimError  # noqa: E402
from ..fileio import write_text_atomic  # noqa: E402


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list = field(default_factory=list)    # (headers, rows)
    figures: list = field(default_factory=list)   # (file name, caption)


class Report:
    def __init__(self, folder, title):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ConvslimError(f"report path {self.folder} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.sections = []
        self.data = {}

    def section(self, title, text=""):
        s = Section(title, text)
        self.sections.append(s)
        return s

    def figure(self, section, name, caption):
        """Save the current matplotlib figure as `name`.png and attach it to `section`."""
        path = self.folder / f"{name}.png"
        plt.tight_layout()
        plt.savefig(path, dpi=110)
        plt.close()
        section.figures.append((path.name, caption))
        return path

    def write(self):
        md = [f"# {self.title}", ""]
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for s in self.sections:
            md += [f"## {s.title}", ""]
            body.append(f"<h2>{html.escape(s.title)}</h2>")
            if s.text:
                md += [s.text, ""]
                body += [f"<p>{html.escape(p)}</p>" for p in s.text.split("\n\n")]
            for headers, rows in s.tables:
                md += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                md += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""]
                head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
                cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><tr>{head}</tr>{cells}</table>")
            for name, caption in s.figures:
                md += [f"![{caption}]({name})", f"*{caption}*", ""]
                body.append(f'<figure><img src="{name}" alt="{html.escape(caption)}">'
                            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
                 "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
        write_text_atomic(self.folder / "report.md", "\n".join(md))
        write_text_atomic(self.folder / "report.html", page)
        if self.data:
            write_text_atomic(self.folder / "report.json", json.dumps(self.data, indent=2))
        return self.folder / "report.md"
