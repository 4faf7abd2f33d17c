"""Page faults and system time of simulate() with and without ftbc.train.allocator's setting.

Usage: OMP_NUM_THREADS=1 python3 scripts/allocator_probe_simulate.py {plain,tuned} IMAGES T
"""
import ctypes, resource, sys, time
mode = sys.argv[1]
if mode == "tuned":
    libc = ctypes.CDLL("libc.so.6"); libc.mallopt(-4, 0); libc.mallopt(-1, 1 << 30)
import torch
from ftbc.models import create_model
from ftbc.snn.conversion import convert
from baselines import get_method
from ftbc.snn.simulation import simulate
torch.manual_seed(0)
m = create_model("vgg_small", num_classes=10, act_layer="relu").eval()
x = torch.randn(int(sys.argv[2]), 3, 32, 32)
snn = convert(m, get_method("maxnorm"), data=x, T=8).snn
simulate(snn, x[:16], 2)
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
simulate(snn, x, int(sys.argv[3]))
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(mode, "wall %.1f s user %.1f sys %.1f minflt %d" % (time.perf_counter()-t0, r1.ru_utime-r0.ru_utime, r1.ru_stime-r0.ru_stime, r1.ru_minflt-r0.ru_minflt))
