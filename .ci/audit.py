"""Dependency audit for CI: pip-audit over the installed environment (PyPI's vulnerability
data). Fails when a known vulnerability has a fixed release; reports how many packages could
be audited, since an index without vulnerability data (an offline mirror) audits none."""
import json
import subprocess
import sys

result = subprocess.run(
    [sys.executable, "-m", "pip_audit", "--local", "--vulnerability-service", "pypi",
     "--progress-spinner", "off", "--format", "json"],
    capture_output=True, text=True)
if result.returncode not in (0, 1) or not result.stdout.strip():
    print(f"audit: pip-audit failed to run ({result.returncode}):\n{result.stderr}")
    sys.exit(1)
dependencies = json.loads(result.stdout)["dependencies"]
skipped = [d for d in dependencies if "skip_reason" in d]
fixable = [(d["name"], d["version"], v["id"], v["fix_versions"])
           for d in dependencies for v in d.get("vulns", []) if v.get("fix_versions")]
print(f"audit: {len(dependencies) - len(skipped)} of {len(dependencies)} packages audited"
      + (f"; {len(skipped)} could not be (the index serves no vulnerability data for them)"
         if skipped else ""))
for name, version, vuln, fixes in fixable:
    print(f"audit: {name} {version}: {vuln}, fixed in {', '.join(fixes)}")
sys.exit(1 if fixable else 0)
