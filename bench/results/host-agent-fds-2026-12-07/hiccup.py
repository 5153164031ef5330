import os, sys, time
cpu=int(sys.argv[1]); secs=float(sys.argv[2])
os.sched_setaffinity(0,{cpu})
end=time.monotonic()+secs; worst=0; over=[]
while True:
    t=time.monotonic()
    if t>end: break
    time.sleep(0.001)
    d=time.monotonic()-t-0.001
    if d>worst: worst=d
    if d>0.005: over.append(d)
print(f"cpu{cpu} max_stall_ms={worst*1000:.1f} stalls_over_5ms={len(over)}")
