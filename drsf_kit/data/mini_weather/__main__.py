"""``python -m drsf_kit.data.mini_weather FIGURE.png [SEED]``: one scene in all five domains, with its mask."""

import io
import sys
from pathlib import Path

from drsf_kit.data.mini_weather.build import domains_figure
from drsf_kit.utils.io import atomic_write_bytes

target = Path(sys.argv[1] if len(sys.argv) > 1 else "figures/mini_weather_domains.png")
figure = domains_figure(int(sys.argv[2]) if len(sys.argv) > 2 else 23)
buf = io.BytesIO()
figure.savefig(buf, format="png", dpi=100)
atomic_write_bytes(target, buf.getvalue())
print(target)
