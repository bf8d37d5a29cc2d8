//! Mixed precision for the backbone's convolutions, scoped to a closure on the calling thread.
//!
//! Micikevicius et al., "Mixed Precision Training" (ICLR 2018), as PyTorch's autocast applies
//! it: the matrix-heavy operations (here every backbone convolution) take their input and
//! weights cast to a 16-bit float type, while the weights themselves stay `f32` (the "master"
//! copy the optimizer updates) and everything else (BatchNorm with its running statistics, the
//! attention units, the classifier, the loss) computes in `f32`. Each convolution casts its
//! output back to `f32`. burn's autodiff casts a gradient back to its input's type at every
//! cast, so the weights' gradients arrive in `f32`.
//!
//! A scope rather than a model setting, as in PyTorch: the same model trains in mixed precision
//! and evaluates, exports and explains in `f32`, and no saved model records how it was trained.

use std::cell::Cell;

use burn::tensor::FloatDType;

thread_local! {
    static CONVOLUTION_DTYPE: Cell<Option<FloatDType>> = const { Cell::new(None) };
}

/// Run `f` with the backbone's convolutions computing in `dtype` on this thread (`None` or
/// `f32`: full precision, as outside any scope). The previous setting is restored afterwards,
/// also when `f` panics.
pub fn with_convolutions_in<R>(dtype: Option<FloatDType>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<FloatDType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CONVOLUTION_DTYPE.with(|cell| cell.set(self.0));
        }
    }
    let dtype = dtype.filter(|dtype| *dtype != FloatDType::F32);
    let _restore = Restore(CONVOLUTION_DTYPE.with(|cell| cell.replace(dtype)));
    f()
}

/// The type the backbone's convolutions compute in on this thread, where it is not `f32`.
pub fn convolution_dtype() -> Option<FloatDType> {
    CONVOLUTION_DTYPE.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_sets_and_restores_the_type_and_ignores_f32() {
        assert_eq!(convolution_dtype(), None);
        with_convolutions_in(Some(FloatDType::F16), || {
            assert_eq!(convolution_dtype(), Some(FloatDType::F16));
            with_convolutions_in(Some(FloatDType::F32), || {
                assert_eq!(convolution_dtype(), None)
            });
            assert_eq!(convolution_dtype(), Some(FloatDType::F16));
        });
        assert_eq!(convolution_dtype(), None);
        let panicked = std::panic::catch_unwind(|| {
            with_convolutions_in(Some(FloatDType::BF16), || panic!("inside"))
        });
        assert!(panicked.is_err());
        assert_eq!(convolution_dtype(), None);
    }
}
