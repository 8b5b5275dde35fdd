"""Write the generated train-option table into README.md (between its train-options markers)."""

from pathlib import Path

from cnnbench.docs import readme_with_table

readme = Path(__file__).resolve().parents[1] / "README.md"
readme.write_text(readme_with_table(readme.read_text()))
print(f"updated {readme}")
