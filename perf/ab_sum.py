#!/usr/bin/python3
"""perf/ab_sum.py BINARY JSON: one line per wse-bench --json result (msg/s, server us/msg)."""
import json,sys
d=json.load(open(sys.argv[2]))
out=[]
for name,t in d["tests"].items():
    for r in t["rows"]:
        s=r.get("server",{})
        fmt=r.get("format","")
        out.append("%s%s %.2fM/s %.3fus" % (name[:6], ("/"+fmt) if fmt else "", r["msg_per_s"]/1e6, s.get("user_us_per_msg",0)+s.get("sys_us_per_msg",0)))
print(sys.argv[1], " | ".join(out))
