// The dmfx operator library: every schema in one place. Each op registers one kernel per device
// with the dispatcher: CPU in csrc/cpu/<op>_op.cpp, CUDA in csrc/cuda/<op>_op.cpp (CUDA builds
// only); the differentiable ones their autograd and autocast wrappers in csrc/<op>.cpp
// (row_sparse_adam_, in place, its ADInplaceOrView and autograd registrations there); every op
// its fake (meta) kernel from Python (dmfx/ops.py).
#include <Python.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <string>

TORCH_LIBRARY(dmfx, m) {
  m.def(
      "sparse_rows_matmul(Tensor indptr, Tensor indices, Tensor? values, Tensor rows, "
      "Tensor weight, bool validate=True) -> Tensor");
  m.def(
      "sparse_rows_matmul_backward_weight(Tensor indptr, Tensor indices, Tensor? values, "
      "Tensor rows, Tensor grad_out, SymInt num_weight_rows, bool validate=True) -> Tensor");
  m.def(
      "sparse_rows_matmul_backward_values(Tensor indptr, Tensor indices, Tensor rows, "
      "Tensor weight, Tensor grad_out, bool validate=True) -> Tensor");
  m.def(
      "cosine_nce_loss(Tensor p, Tensor q, Tensor target, float mu=1e-06, "
      "str reduction=\"mean\", bool validate=True) -> Tensor");
  m.def(
      "cosine_nce_loss_backward(Tensor grad, Tensor p, Tensor q, Tensor target, float mu, "
      "str reduction) -> (Tensor, Tensor)");
  m.def(
      "hybrid_bce_loss(Tensor logits, Tensor implicit_target, Tensor explicit_target, float eta, "
      "str reduction=\"mean\", bool validate=True) -> Tensor");
  m.def(
      "hybrid_bce_loss_backward(Tensor grad, Tensor logits, Tensor implicit_target, "
      "Tensor explicit_target, float eta, str reduction) -> Tensor");
  // seed is a SymInt (the kernels take it as int64_t) so that torch.compile, given a new seed
  // every step, makes it a dynamic input instead of recompiling for each value.
  m.def(
      "sample_negatives(Tensor indptr, Tensor indices, Tensor users, int num_items, "
      "int num_negatives, SymInt seed, bool validate=True) -> Tensor");
  m.def(
      "row_sparse_adam_(Tensor(a!) weight, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor rows, Tensor grad_rows, float lr, float beta1, float beta2, float eps, int step, "
      "bool validate=True) -> ()");
}

#ifndef WITH_CUDA
namespace {

// A build without the CUDA kernels registers this for the CUDA key of every op, so that a CUDA
// tensor gets a message saying what is missing, not the dispatcher's generic "could not run
// ... with arguments from the 'CUDA' backend".
void no_cuda_kernels(const c10::OperatorHandle& op, torch::jit::Stack*) {
  std::string name = op.schema().name();
  name.replace(name.find("::"), 2, ".");
  TORCH_CHECK_NOT_IMPLEMENTED(
      false, name, ": dmfx was built without CUDA kernels, so its ops cannot run on CUDA "
      "tensors; rebuild it where torch has CUDA and the CUDA toolkit is found (setup.py builds "
      "them then; FORCE_CUDA=1 on a machine without a GPU), or pass CPU tensors");
}

}  // namespace

TORCH_LIBRARY_IMPL(dmfx, CUDA, m) {
  for (const char* name :
       {"sparse_rows_matmul", "sparse_rows_matmul_backward_weight",
        "sparse_rows_matmul_backward_values", "cosine_nce_loss", "cosine_nce_loss_backward",
        "hybrid_bce_loss", "hybrid_bce_loss_backward", "sample_negatives", "row_sparse_adam_"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&no_cuda_kernels>());
  }
}
#endif

namespace {

PyObject* cuda_enabled(PyObject*, PyObject*) {
#ifdef WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

// Without OpenMP, at::parallel_for runs every CPU kernel on the calling thread (see setup.py).
PyObject* openmp_enabled(PyObject*, PyObject*) {
#ifdef _OPENMP
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"cuda_enabled", cuda_enabled, METH_NOARGS, "Whether the CUDA kernels were built."},
    {"openmp_enabled", openmp_enabled, METH_NOARGS,
     "Whether the CPU kernels were built to run on torch's OpenMP threads."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                          "dmfx kernels; importing this module registers torch.ops.dmfx.", -1,
                          methods};

}  // namespace

// Importing dmfx._C loads this library, whose static initialisers register the ops.
extern "C" PyObject* PyInit__C(void) { return PyModule_Create(&module_def); }
