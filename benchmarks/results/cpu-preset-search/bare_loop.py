import time, torch, sys, json, math
import numpy as np
torch.set_num_threads(int(__import__('os').environ.get('THREADS','1')))
from composerlite.models import build_model, ModelSpec
from composerlite.data import prepare_corpus
c = prepare_corpus(None)
train = torch.from_numpy(np.asarray(c.train_tokens).astype(np.int64))
held = torch.from_numpy(np.asarray(c.eval_tokens).astype(np.int64))
def evaluate(m, T):
    m.eval(); losses=[]
    with torch.no_grad():
        n = (len(held)-1)//T
        x = held[: n*T].view(n, T)[:64]
        for i in range(0, len(x), 16):
            losses.append(m(input_ids=x[i:i+16], labels=x[i:i+16]).loss.item())
    m.train(); return sum(losses)/len(losses)
COSINE=True
def run(name, spec, B, T, lr, seconds, wd=0.0, budget=600_000):
    torch.manual_seed(0); g = torch.Generator().manual_seed(0)
    m = build_model(spec, dropout=0.0)
    opt = torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.9,0.95), weight_decay=wd)
    t0=time.perf_counter(); step=0; toks=0; next_eval=0
    while True:
        el = time.perf_counter()-t0
        if toks >= next_eval:
            te=time.perf_counter(); l=evaluate(m,T); t0 += time.perf_counter()-te
            print(json.dumps(dict(name=name, t=round(el,1), step=step, tokens=toks, eval=round(l,3))), flush=True)
            next_eval += 100_000
            if toks >= budget: break
        idx = torch.randint(0, len(train)-T-1, (B,), generator=g)
        x = torch.stack([train[i:i+T] for i in idx])
        for gr in opt.param_groups: gr['lr'] = lr*min(1,(step+1)/20)*(0.5*(1+math.cos(math.pi*min(1,toks/budget))) if COSINE else 1)
        m(input_ids=x, labels=x).loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        step+=1; toks+=B*T
tiny=ModelSpec("t",2,64,256,2); small=ModelSpec("s",4,128,512,4)
which = sys.argv[1]
cfgs = {"A": ("tiny16x128_3e-3", tiny,16,128,3e-3), "B": ("tiny8x64_3e-3", tiny,8,64,3e-3),
        "C": ("small8x128_2e-3", small,8,128,2e-3), "D": ("tiny16x128_1e-2", tiny,16,128,1e-2),
        "E": ("tiny8x128_1e-2", tiny,8,128,1e-2), "X": ("tiny8x128_2e-2_cos", tiny,8,128,2e-2), "Y": ("d128L4_8x128_1e-2_cos", small,8,128,1e-2), "F": ("small8x128_6e-3", small,8,128,6e-3)}
for k in which:
    run(*cfgs[k], seconds=0, budget=int(sys.argv[2]))
