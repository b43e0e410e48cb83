// 2-D convolution through oneDNN, called from JAX as three XLA FFI custom calls (issue 29).
//
// XLA:CPU runs the model's convolutions (above all their kernel gradients) at a fraction of the
// machine's speed; oneDNN's brgconv kernels run 2-7x faster on the train step's shapes
// (benchmarks/onednn_spike/RESULTS.md). bts_jax/models/onednn/ffi.py wraps these handlers in a
// jax.custom_vjp; build.py compiles this file on first use.
//
// Layouts are the model's: activations NHWC, kernels HWIO (grouped: H, W, I/G, O with output
// channel o in group o / (O/G), which is oneDNN's hwigo). Every buffer has one dtype, float32 or
// bfloat16 (as XLA runs the model's bfloat16 step). The three handlers:
//   bts_onednn_conv_fwd          (x (N,H,W,C), w (KH,KW,C/G,O))  -> y  (N,OH,OW,O)
//   bts_onednn_conv_bwd_data     (dy (N,OH,OW,O), w)              -> dx (N,H,W,C)
//   bts_onednn_conv_bwd_weights  (x, dy)                          -> dw (KH,KW,C/G,O)
// Attributes: stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right (the effective ones:
// (OH-1)*stride + KH - H - pad_top for the bottom, which ffi.py computes), groups, and
// weights_any: 1 lets oneDNN choose the kernel's layout (the small kernel is reordered from and
// to HWIO on every call), 0 runs on HWIO memory as is. On HWIO memory oneDNN falls back to its
// im2col gemm for both gradients, often slower than XLA; with its own kernel layout it picks the
// brgconv kernels (the spike's "wany" variant, best or near best on most shapes).
#include <oneapi/dnnl/dnnl.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;

namespace {

enum Direction { FWD = 0, BWD_DATA = 1, BWD_WEIGHTS = 2 };

struct Attrs {
    int64_t sh, sw, pt, pb, pl, pr, groups, weights_any;
};

// The engine, lock and cache live until the process ends and are never destroyed: at exit,
// static destructors would run while XLA's threads and OpenMP's may still be calling in.
dnnl::engine &engine() {
    static auto *e = new dnnl::engine(dnnl::engine::kind::cpu, 0);
    return *e;
}

// A primitive built for one shape, with what a call needs around it. Built once per
// (direction, dtype, shapes, attributes): creating a primitive descriptor and JIT-compiling its
// kernel takes milliseconds, as long as running it on the smaller shapes.
struct Entry {
    dnnl::primitive prim;
    memory::desc src, wei_user, dst;  // NHWC / HWIO, as XLA holds them
    memory::desc wei;                 // the primitive's kernel layout
    dnnl::reorder wei_reorder;        // HWIO -> wei (fwd, bwd_data) or wei -> HWIO (bwd_weights)
    memory wei_buffer;                // the kernel in the primitive's layout, reused by every call
    memory scratch, wei_scratch;      // the primitive's and the reorder's scratchpads
    bool reorder = false;
};

// Scratchpads are the entries' own ("user" mode): oneDNN's default keeps one per thread, shared
// by the primitives created on that thread, and XLA calls a custom call from whichever of its
// threads is free, so a primitive created on one thread and run on another could find its
// scratchpad too small or in use (crashes seen: "could not execute a primitive", segfaults).
dnnl::primitive_attr user_scratchpad() {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return attr;
}

// Calls are serialised: entries own their kernel buffers, and oneDNN's OpenMP team already
// uses every core, so two convolutions at once would only compete for them.
std::mutex &lock() {
    static auto *m = new std::mutex;
    return *m;
}

std::map<std::string, std::unique_ptr<Entry>> &cache() {
    static auto *c = new std::map<std::string, std::unique_ptr<Entry>>;
    return *c;
}

memory::dims dims_of(ffi::AnyBuffer::Dimensions d) { return memory::dims(d.begin(), d.end()); }

std::unique_ptr<Entry> build(Direction dir, memory::data_type type, const memory::dims &x,
                             const memory::dims &w, const memory::dims &y, const Attrs &a) {
    auto e = std::make_unique<Entry>();
    const int64_t n = x[0], h = x[1], wd = x[2], c = x[3];
    const int64_t kh = w[0], kw = w[1], o = w[3], g = a.groups;
    e->src = memory::desc({n, c, h, wd}, type, tag::nhwc);
    e->dst = memory::desc({n, o, y[1], y[2]}, type, tag::nhwc);
    e->wei_user = g == 1 ? memory::desc({o, c, kh, kw}, type, tag::hwio)
                         : memory::desc({g, o / g, c / g, kh, kw}, type, tag::hwigo);
    const memory::desc wei_any(e->wei_user.get_dims(), type, tag::any);
    const memory::desc &wei_req = a.weights_any ? wei_any : e->wei_user;
    const memory::dims strides = {a.sh, a.sw}, pad_l = {a.pt, a.pl}, pad_r = {a.pb, a.pr};
    const auto alg = dnnl::algorithm::convolution_direct;
    // The backward primitives need the forward one as a hint, on the same descriptors.
    const dnnl::primitive_attr attr = user_scratchpad();
    dnnl::convolution_forward::primitive_desc fwd(engine(), dnnl::prop_kind::forward_training,
                                                  alg, e->src, wei_req, e->dst, strides, pad_l,
                                                  pad_r, attr);
    memory::desc scratch;
    if (dir == FWD) {
        e->prim = dnnl::convolution_forward(fwd);
        e->wei = fwd.weights_desc();
        scratch = fwd.scratchpad_desc();
    } else if (dir == BWD_DATA) {
        dnnl::convolution_backward_data::primitive_desc pd(engine(), alg, e->src, wei_req, e->dst,
                                                           strides, pad_l, pad_r, fwd, attr);
        e->prim = dnnl::convolution_backward_data(pd);
        e->wei = pd.weights_desc();
        scratch = pd.scratchpad_desc();
    } else {
        dnnl::convolution_backward_weights::primitive_desc pd(
            engine(), alg, e->src, wei_req, e->dst, strides, pad_l, pad_r, fwd, attr);
        e->prim = dnnl::convolution_backward_weights(pd);
        e->wei = pd.diff_weights_desc();
        scratch = pd.scratchpad_desc();
    }
    e->scratch = memory(scratch, engine());
    e->reorder = e->wei != e->wei_user;
    if (e->reorder) {
        e->wei_buffer = memory(e->wei, engine());
        const bool out = dir == BWD_WEIGHTS;  // the kernel gradient goes back to HWIO
        dnnl::reorder::primitive_desc pd(engine(), out ? e->wei : e->wei_user, engine(),
                                         out ? e->wei_user : e->wei, attr);
        e->wei_reorder = dnnl::reorder(pd);
        e->wei_scratch = memory(pd.scratchpad_desc(), engine());
    }
    return e;
}

std::string key_of(Direction dir, memory::data_type type, const memory::dims &x,
                   const memory::dims &w, const memory::dims &y, const Attrs &a) {
    std::string k = std::to_string(dir) + ":" + std::to_string(static_cast<int>(type));
    for (const auto *d : {&x, &w, &y})
        for (int64_t v : *d) k += "," + std::to_string(v);
    for (int64_t v : {a.sh, a.sw, a.pt, a.pb, a.pl, a.pr, a.groups, a.weights_any})
        k += ";" + std::to_string(v);
    return k;
}

// Runs one direction. in0/in1/out are, per direction: fwd (x, w -> y), bwd_data (dy, w -> dx),
// bwd_weights (x, dy -> dw); x/w/y below are the shapes of the forward convolution's arrays.
ffi::Error run(Direction dir, ffi::AnyBuffer in0, ffi::AnyBuffer in1,
               ffi::Result<ffi::AnyBuffer> out, const Attrs &a) {
    const auto dtype = in0.element_type();
    if (in1.element_type() != dtype || out->element_type() != dtype)
        return ffi::Error(ffi::ErrorCode::kInvalidArgument, "oneDNN conv: mixed dtypes");
    memory::data_type type;
    if (dtype == ffi::DataType::F32)
        type = memory::data_type::f32;
    else if (dtype == ffi::DataType::BF16)
        type = memory::data_type::bf16;
    else
        return ffi::Error(ffi::ErrorCode::kInvalidArgument, "oneDNN conv: float32 or bfloat16");
    memory::dims d0 = dims_of(in0.dimensions()), d1 = dims_of(in1.dimensions()),
                 d2 = dims_of(out->dimensions());
    if (d0.size() != 4 || d1.size() != 4 || d2.size() != 4)
        return ffi::Error(ffi::ErrorCode::kInvalidArgument, "oneDNN conv: rank-4 arrays only");
    const memory::dims &x = dir == BWD_DATA ? d2 : d0;
    const memory::dims &w = dir == FWD ? d1 : (dir == BWD_DATA ? d1 : d2);
    const memory::dims &y = dir == FWD ? d2 : (dir == BWD_DATA ? d0 : d1);
    void *p0 = in0.untyped_data(), *p1 = in1.untyped_data(), *p2 = out->untyped_data();
    try {
        std::lock_guard<std::mutex> guard(lock());
        auto &slot = cache()[key_of(dir, type, x, w, y, a)];
        if (!slot) slot = build(dir, type, x, w, y, a);
        Entry &e = *slot;
        dnnl::stream strm(engine());
        // Kernel argument: the caller's HWIO buffer, or the entry's buffer in oneDNN's layout.
        void *w_user = dir == BWD_WEIGHTS ? p2 : p1;
        memory w_user_mem(e.wei_user, engine(), w_user);
        memory w_mem = e.reorder ? e.wei_buffer : w_user_mem;
        auto reorder = [&](const memory &from, const memory &to) {
            e.wei_reorder.execute(strm, {{DNNL_ARG_FROM, from},
                                         {DNNL_ARG_TO, to},
                                         {DNNL_ARG_SCRATCHPAD, e.wei_scratch}});
        };
        if (e.reorder && dir != BWD_WEIGHTS) reorder(w_user_mem, w_mem);
        if (dir == FWD) {
            e.prim.execute(strm, {{DNNL_ARG_SRC, memory(e.src, engine(), p0)},
                                  {DNNL_ARG_WEIGHTS, w_mem},
                                  {DNNL_ARG_DST, memory(e.dst, engine(), p2)},
                                  {DNNL_ARG_SCRATCHPAD, e.scratch}});
        } else if (dir == BWD_DATA) {
            e.prim.execute(strm, {{DNNL_ARG_DIFF_DST, memory(e.dst, engine(), p0)},
                                  {DNNL_ARG_WEIGHTS, w_mem},
                                  {DNNL_ARG_DIFF_SRC, memory(e.src, engine(), p2)},
                                  {DNNL_ARG_SCRATCHPAD, e.scratch}});
        } else {
            e.prim.execute(strm, {{DNNL_ARG_SRC, memory(e.src, engine(), p0)},
                                  {DNNL_ARG_DIFF_DST, memory(e.dst, engine(), p1)},
                                  {DNNL_ARG_DIFF_WEIGHTS, w_mem},
                                  {DNNL_ARG_SCRATCHPAD, e.scratch}});
            if (e.reorder) reorder(w_mem, w_user_mem);
        }
        strm.wait();
    } catch (const dnnl::error &err) {
        return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN conv: ") + err.what());
    }
    return ffi::Error::Success();
}

#define BTS_ATTRS(dir)                                                                         \
    [](ffi::AnyBuffer in0, ffi::AnyBuffer in1, ffi::Result<ffi::AnyBuffer> out, int64_t sh,   \
       int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t groups,            \
       int64_t weights_any) {                                                                 \
        return run(dir, in0, in1, out, Attrs{sh, sw, pt, pb, pl, pr, groups, weights_any});   \
    }

#define BTS_BINDING                                                                            \
    ffi::Ffi::Bind()                                                                           \
        .Arg<ffi::AnyBuffer>()                                                                 \
        .Arg<ffi::AnyBuffer>()                                                                 \
        .Ret<ffi::AnyBuffer>()                                                                 \
        .Attr<int64_t>("stride_h")                                                             \
        .Attr<int64_t>("stride_w")                                                             \
        .Attr<int64_t>("pad_top")                                                              \
        .Attr<int64_t>("pad_bottom")                                                           \
        .Attr<int64_t>("pad_left")                                                             \
        .Attr<int64_t>("pad_right")                                                            \
        .Attr<int64_t>("groups")                                                               \
        .Attr<int64_t>("weights_any")

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(bts_onednn_conv_fwd, BTS_ATTRS(FWD), BTS_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(bts_onednn_conv_bwd_data, BTS_ATTRS(BWD_DATA), BTS_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(bts_onednn_conv_bwd_weights, BTS_ATTRS(BWD_WEIGHTS), BTS_BINDING);

// The number of primitives built so far: tests check that a shape is built once.
extern "C" int64_t bts_onednn_cache_size() {
    std::lock_guard<std::mutex> guard(lock());
    return static_cast<int64_t>(cache().size());
}
