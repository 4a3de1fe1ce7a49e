// Jobs of alternating sizes (1 task, then 40) through the helper thread, with the windows between a job's
// publication and the helper leaving the previous job stretched (WN_WIDEN_RACE_WINDOWS): every task of every job
// must run exactly once. A helper that claimed under the old generation with the new job's task count ran a task
// twice. Prints "iterations N bad M helped H" and exits 1 on any bad count.
#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "kernels.h"

using namespace wn;

struct Runs {
  std::atomic<int> count[64];
};

static void task(const void* ctx, int64_t t) { const_cast<Runs*>(static_cast<const Runs*>(ctx))->count[t].fetch_add(1); }

int main(int argc, char** argv) {
  const long iterations = argc > 1 ? std::atol(argv[1]) : 50000;
  long bad = 0;
  for (long i = 0; i < iterations; ++i) {
    const int64_t T = (i & 1) ? 40 : 1;
    Runs runs;
    for (auto& c : runs.count) c.store(0);
    {
      Team team(Job{task, &runs, T}, true, true);  // forced: no back-off after a stall
      team.ready(T);
      team.finish();
    }
    for (int64_t t = 0; t < 64; ++t)
      if (runs.count[t].load() != (t < T ? 1 : 0) && bad++ < 5)
        std::printf("iteration %ld: task %lld of %lld ran %d times\n", i, (long long)t, (long long)T, runs.count[t].load());
  }
  std::printf("iterations %ld bad %ld helped %lld\n", iterations, bad, (long long)helped_tasks());
  return bad != 0;
}
