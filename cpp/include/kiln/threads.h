#pragma once

namespace kiln {

// kiln's kernel thread pool: by default one thread per core (KILN_NUM_THREADS overrides).
int num_threads();
void set_num_threads(int n);

}  // namespace kiln
