// CUDA kernels of the optim ops (cpp/src/ops/optim.cpp defines the ops, their update rules and CPU kernels). lr and
// step are one-element tensors on the device: every block reads them and derives its scalars itself (thread 0, into
// shared memory), so that a learning-rate schedule never costs a copy to the host or a synchronization.
// Outputs may be the inputs (the variables are updated in place): each thread reads element i of every input before
// writing element i of any output, and touches no other element.
#include <cmath>

#include "common.cuh"

namespace kiln::cuda {
namespace {

template <class T>
struct Sgd {
  T momentum, keep, wd;  // keep: 1 - dampening
  bool use_momentum, nesterov;
};

// inputs param, grad, momentum_buffer, lr, step; outputs param, momentum_buffer
template <class T>
__global__ void sgd_update(int64_t n, const T* p, const T* g, const T* buf, const T* lr_in, const T* step_in, T* np,
                           T* nb, Sgd<T> a) {
  const T lr = *lr_in;
  const bool first = *step_in <= T(1);  // torch: the first step copies the gradient into the buffer
  KILN_GRID_LOOP(i, n) {
    const T pi = p[i];
    T d = g[i] + a.wd * pi;
    if (a.use_momentum) {
      const T v = first ? d : a.momentum * buf[i] + a.keep * d;
      nb[i] = v;
      d = a.nesterov ? d + a.momentum * v : v;
    } else {
      nb[i] = buf[i];
    }
    np[i] = pi - lr * d;
  }
}

void sgd_kernel(const KernelContext& c) {
  const double momentum = c.attrs.f("momentum", 0), dampening = c.attrs.f("dampening", 0),
               wd = c.attrs.f("weight_decay", 0);
  const bool nesterov = c.attrs.i("nesterov", 0);
  const int64_t n = c.input(0).numel();
  if (n == 0) return;
  KILN_DISPATCH_FLOAT(c.input(0).dtype(), "sgd_update", {
    using T = scalar_t;
    const Sgd<T> a{T(momentum), T(1 - dampening), T(wd), momentum != 0, nesterov};
    sgd_update<<<blocks_for(n), kThreads, 0, stream()>>>(
        n, c.input(0).data<T>(), c.input(1).data<T>(), c.input(2).data<T>(), c.input(3).data<T>(), c.input(4).data<T>(),
        c.output(0).data<T>(), c.output(1).data<T>(), a);
  });
  check_launch("sgd_update");
}

struct AdamAttrs {
  double b1, b2, eps, wd;
};

// inputs param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, step;
// outputs param, exp_avg, exp_avg_sq, max_exp_avg_sq (copied through without amsgrad)
template <class T, bool amsgrad, bool decoupled>
__global__ void adam_update(int64_t n, const T* p, const T* g, const T* m, const T* v, const T* vmax, const T* lr_in,
                            const T* step_in, T* np, T* nm, T* nv, T* nvmax, AdamAttrs a) {
  __shared__ T k[3];
  if (threadIdx.x == 0) {  // the bias corrections in double, from the step as a T, as the CPU
    const T lr = *lr_in;
    const double t = *step_in;
    k[0] = T(lr / (1 - pow(a.b1, t)));
    k[1] = T(1 / sqrt(1 - pow(a.b2, t)));
    k[2] = T(1 - lr * a.wd);
  }
  __syncthreads();
  const T step_size = k[0], inv_bc2_sqrt = k[1], decay = k[2];
  const T l2 = T(a.wd), B1 = T(a.b1), B2 = T(a.b2), E = T(a.eps);
  KILN_GRID_LOOP(i, n) {
    T pi = p[i], gi = g[i];
    if constexpr (decoupled)
      pi *= decay;  // AdamW
    else
      gi += l2 * pi;  // Adam's L2 penalty
    const T mi = B1 * m[i] + (T(1) - B1) * gi;
    const T vi = B2 * v[i] + (T(1) - B2) * gi * gi;
    T vhat = vi;
    if constexpr (amsgrad) {
      const T vmi = vmax[i];
      vhat = nvmax[i] = vmi > vi ? vmi : vi;
    } else if (nvmax != vmax) {  // in place, the untouched slot costs no traffic
      nvmax[i] = vmax[i];
    }
    np[i] = pi - step_size * mi / (sqrt(vhat) * inv_bc2_sqrt + E);
    nm[i] = mi;
    nv[i] = vi;
  }
}

template <class T, bool amsgrad, bool decoupled>
void adam_launch(const KernelContext& c, const AdamAttrs& a) {
  const int64_t n = c.input(0).numel();
  adam_update<T, amsgrad, decoupled><<<blocks_for(n), kThreads, 0, stream()>>>(
      n, c.input(0).data<T>(), c.input(1).data<T>(), c.input(2).data<T>(), c.input(3).data<T>(), c.input(4).data<T>(),
      c.input(5).data<T>(), c.input(6).data<T>(), c.output(0).data<T>(), c.output(1).data<T>(), c.output(2).data<T>(),
      c.output(3).data<T>(), a);
}

void adam_kernel(const KernelContext& c) {
  const AdamAttrs a{c.attrs.f("beta1"), c.attrs.f("beta2"), c.attrs.f("eps"), c.attrs.f("weight_decay", 0)};
  const bool amsgrad = c.attrs.i("amsgrad", 0), decoupled = c.attrs.i("decoupled", 0);
  if (c.input(0).numel() == 0) return;
  KILN_DISPATCH_FLOAT(c.input(0).dtype(), "adam_update", {
    if (amsgrad && decoupled)
      adam_launch<scalar_t, true, true>(c, a);
    else if (amsgrad)
      adam_launch<scalar_t, true, false>(c, a);
    else if (decoupled)
      adam_launch<scalar_t, false, true>(c, a);
    else
      adam_launch<scalar_t, false, false>(c, a);
  });
  check_launch("adam_update");
}

// inputs param, grad, sum, lr, step; outputs param, sum
template <class T>
__global__ void adagrad_update(int64_t n, const T* p, const T* g, const T* s, const T* lr_in, const T* step_in, T* np,
                               T* ns, double lr_decay, T wd, T eps) {
  __shared__ T clr_s;
  if (threadIdx.x == 0) {
    const double t = *step_in;
    clr_s = T(*lr_in / (1 + (t - 1) * lr_decay));
  }
  __syncthreads();
  const T clr = clr_s;
  KILN_GRID_LOOP(i, n) {
    const T pi = p[i], gi = g[i] + wd * pi;
    const T si = s[i] + gi * gi;
    ns[i] = si;
    np[i] = pi - clr * gi / (sqrt(si) + eps);
  }
}

void adagrad_kernel(const KernelContext& c) {
  const double lr_decay = c.attrs.f("lr_decay", 0), wd = c.attrs.f("weight_decay", 0), eps = c.attrs.f("eps");
  const int64_t n = c.input(0).numel();
  if (n == 0) return;
  KILN_DISPATCH_FLOAT(c.input(0).dtype(), "adagrad_update", {
    using T = scalar_t;
    adagrad_update<<<blocks_for(n), kThreads, 0, stream()>>>(
        n, c.input(0).data<T>(), c.input(1).data<T>(), c.input(2).data<T>(), c.input(3).data<T>(), c.input(4).data<T>(),
        c.output(0).data<T>(), c.output(1).data<T>(), lr_decay, T(wd), T(eps));
  });
  check_launch("adagrad_update");
}

template <class T>
struct RmsProp {
  T alpha, keep, eps, wd, momentum;  // keep: 1 - alpha
  bool use_momentum, centered;
};

// inputs param, grad, square_avg, momentum_buffer, grad_avg, lr, step;
// outputs param, square_avg, momentum_buffer, grad_avg
template <class T>
__global__ void rmsprop_update(int64_t n, const T* p, const T* g, const T* sq, const T* buf, const T* ga,
                               const T* lr_in, T* np, T* nsq, T* nbuf, T* nga, RmsProp<T> a) {
  const T lr = *lr_in;
  KILN_GRID_LOOP(i, n) {
    const T pi = p[i], gi = g[i] + a.wd * pi, bi = buf[i], gai = ga[i];
    const T s = a.alpha * sq[i] + a.keep * gi * gi;
    nsq[i] = s;
    T avg = s;
    if (a.centered) {
      const T m = a.alpha * gai + a.keep * gi;
      nga[i] = m;
      avg = s - m * m;
    } else {
      nga[i] = gai;
    }
    const T denom = sqrt(avg) + a.eps;
    if (a.use_momentum) {
      const T b = a.momentum * bi + gi / denom;
      nbuf[i] = b;
      np[i] = pi - lr * b;
    } else {
      nbuf[i] = bi;
      np[i] = pi - lr * gi / denom;
    }
  }
}

void rmsprop_kernel(const KernelContext& c) {
  const double alpha = c.attrs.f("alpha"), eps = c.attrs.f("eps"), wd = c.attrs.f("weight_decay", 0),
               momentum = c.attrs.f("momentum", 0);
  const bool centered = c.attrs.i("centered", 0);
  const int64_t n = c.input(0).numel();
  if (n == 0) return;
  KILN_DISPATCH_FLOAT(c.input(0).dtype(), "rmsprop_update", {
    using T = scalar_t;
    const RmsProp<T> a{T(alpha), T(1 - alpha), T(eps), T(wd), T(momentum), momentum > 0, centered};
    rmsprop_update<<<blocks_for(n), kThreads, 0, stream()>>>(
        n, c.input(0).data<T>(), c.input(1).data<T>(), c.input(2).data<T>(), c.input(3).data<T>(), c.input(4).data<T>(),
        c.input(5).data<T>(), c.output(0).data<T>(), c.output(1).data<T>(), c.output(2).data<T>(),
        c.output(3).data<T>(), a);
  });
  check_launch("rmsprop_update");
}

}  // namespace

void register_optim_kernels(OpRegistry& r) {
  r.set_cuda_kernel("sgd_update", sgd_kernel);
  r.set_cuda_kernel("adam_update", adam_kernel);
  r.set_cuda_kernel("adagrad_update", adagrad_kernel);
  r.set_cuda_kernel("rmsprop_update", rmsprop_kernel);
}

}  // namespace kiln::cuda
