"""Page faults and system time of 15 vgg_small training steps with and without the allocator setting.

Usage: OMP_NUM_THREADS=1 python3 scripts/allocator_probe_train.py {plain,tuned}
"""
import ctypes, resource, sys, time, os
mode = sys.argv[1]
if mode == "tuned":
    libc = ctypes.CDLL("libc.so.6")
    print("mmap_max", libc.mallopt(-4, 0), "trim", libc.mallopt(-1, 1 << 30), "top_pad", libc.mallopt(-2, 64 << 20))
import torch
from ftbc.models import create_model
torch.manual_seed(0)
m = create_model("vgg_small", num_classes=10, act_layer="relu")
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(128, 3, 32, 32); y = torch.randint(0, 10, (128,))
def step():
    opt.zero_grad(); loss = torch.nn.functional.cross_entropy(m(x), y); loss.backward(); opt.step()
step()
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
for _ in range(15): step()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(mode, "wall %.1f s user %.1f sys %.1f minflt %d" % (time.perf_counter()-t0, r1.ru_utime-r0.ru_utime, r1.ru_stime-r0.ru_stime, r1.ru_minflt-r0.ru_minflt))
