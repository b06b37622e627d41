"""Fetch the artifacts of this pipeline's child-pipeline jobs (GitLab) into OUT/.

GitLab cannot pass a child pipeline's job artifacts to a job of its parent with `needs`, so the
merge job downloads them through the API: every job of the bridged child pipeline whose name
starts with "cell ", unzipped into OUT/. Needs a token that can read the project's jobs in
EDGEFORGE_CI_TOKEN (a project access token with read_api), or CI_JOB_TOKEN where allowed.
Standard library only.
"""

from __future__ import annotations

import io
import json
import os
import sys
import urllib.request
import zipfile


def _get(url: str, token_header: tuple[str, str]) -> bytes:
    req = urllib.request.Request(url, headers=dict([token_header]))
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()


def main(out: str) -> None:
    api, project, pipeline = os.environ["CI_API_V4_URL"], os.environ["CI_PROJECT_ID"], os.environ["CI_PIPELINE_ID"]
    token = os.environ.get("EDGEFORGE_CI_TOKEN")
    header = ("PRIVATE-TOKEN", token) if token else ("JOB-TOKEN", os.environ["CI_JOB_TOKEN"])
    bridges = json.loads(_get(f"{api}/projects/{project}/pipelines/{pipeline}/bridges", header))
    children = [b["downstream_pipeline"]["id"] for b in bridges if b.get("downstream_pipeline")]
    for child in children:
        jobs = json.loads(_get(f"{api}/projects/{project}/pipelines/{child}/jobs?per_page=100", header))
        for job in jobs:
            if not job["name"].startswith("cell "):
                continue
            data = _get(f"{api}/projects/{project}/jobs/{job['id']}/artifacts", header)
            zipfile.ZipFile(io.BytesIO(data)).extractall(".")
            print(f"fetched {job['name']}")
    os.makedirs(out, exist_ok=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out")
