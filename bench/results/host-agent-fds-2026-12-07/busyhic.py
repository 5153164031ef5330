import os, sys, time
cpu=int(sys.argv[1]); secs=float(sys.argv[2])
os.sched_setaffinity(0,{cpu})
end=time.monotonic()+secs; worst=0; over=0
while True:
    t=time.monotonic()
    if t>end: break
    while time.monotonic()-t < 0.0007: pass   # ~70% busy like a loaded shard
    t1=time.monotonic(); time.sleep(0.0003); d=time.monotonic()-t1-0.0003
    worst=max(worst,d); over+= d>0.005
print(f"cpu{cpu} busy-probe max_stall_ms={worst*1000:.1f} over_5ms={over}")
